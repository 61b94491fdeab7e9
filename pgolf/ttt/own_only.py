"""peer_mode `off`: no peers; every target's committed score is its own-adapter score."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # annotations only: with no peers the ensemble module is never loaded
    import torch

    from pgolf.config import TTTConfig
    from pgolf.ttt.ensemble import ScoreSink
    from pgolf.ttt.lora import BatchedLoRA
    from pgolf.ttt.windows import TTTBatch, Windows


class OwnOnly:
    """The `Ensemble` without peers. It still commits, so the ensemble meter covers every target like the own one."""

    compliant = True
    covers_every_target = True
    peers_on = False

    def __init__(self, ttt: TTTConfig, sink: ScoreSink):
        self.sink = sink

    def before_batch(self, batch: TTTBatch, chunk: int) -> bool:
        return False

    def commit(self, rows: Sequence[int], w: Windows, nll: torch.Tensor, entropy: torch.Tensor | None) -> None:
        self.sink.commit_ensemble(w, nll, None)

    def after_batch(self, batch: TTTBatch, lora: BatchedLoRA) -> None:
        pass

    def base_changed(self) -> None:
        pass

    def warmup_peers(self, lora: BatchedLoRA) -> None:
        return None
