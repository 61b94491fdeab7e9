"""peer_mode `pr2139`: #2139's peer ensemble as submitted. NON-COMPLIANT; reproduced for comparison only.

Peers are the other documents of the same batch, drawn after the batch's chunk
loop (`pr2139_peer_ids`), and the whole batch is re-scored by the peers in
non-overlapping windows (`pr2139_block_spans`); the blend of the stashed own
scores with that re-score is what the mode reports. Document p then depends on
document q of its batch and q on p (C1 fails) and every covered target is
scored twice (C4 fails). A batch with fewer than K documents cannot draw K-1
peers and is left out of the ensemble meter, as #2139 did.
"""

from __future__ import annotations

from typing import Sequence

import torch

from pgolf.config import TTTConfig
from pgolf.ttt.ensemble import PeerEnsemble, ScoreSink, blend_nll, peer_generator
from pgolf.ttt.lora import BatchedLoRA
from pgolf.ttt.windows import TTTBatch, Windows, build_windows


def pr2139_peer_ids(bsz: int, k: int, peer_seed: int, batch_idx: int) -> torch.Tensor:
    """#2139's draw: for each row in order, K-1 distinct other rows of the same batch -> long [bsz, K-1]."""
    assert 2 <= k <= bsz, f"need 2 <= K <= bsz, got K={k}, bsz={bsz}"
    g = peer_generator(peer_seed, batch_idx)
    out = torch.empty(bsz, k - 1, dtype=torch.long)
    for row in range(bsz):
        others = torch.tensor([i for i in range(bsz) if i != row], dtype=torch.long)
        out[row] = others[torch.randperm(bsz - 1, generator=g)[: k - 1]]
    return out


def pr2139_block_spans(pred_len: int, window_tokens: int) -> list[tuple[int, int, int]]:
    """#2139's peer re-scoring windows: non-overlapping blocks [c, c+window) as (win_start, score_start, score_end)."""
    return [(c, c, min(c + window_tokens, pred_len)) for c in range(0, pred_len, window_tokens)]


class PR2139Ensemble(PeerEnsemble):
    """The `Ensemble` of peer_mode `pr2139`: own scores are stashed per batch and blended after a second pass."""

    compliant = False
    covers_every_target = False

    def __init__(self, ttt: TTTConfig, sink: ScoreSink):
        super().__init__(ttt, sink)
        # Own NLL and own entropy of each target of the current batch [bsz, max_pred]; None: not ensembled.
        self.own_stash: torch.Tensor | None = None
        self.entropy_stash: torch.Tensor | None = None

    def before_batch(self, batch: TTTBatch, chunk: int) -> bool:
        if not (self.peers_on and len(batch.docs) >= self.k):  # fewer than K docs: no K-1 distinct peers
            self.own_stash = self.entropy_stash = None
            return False
        shape = (len(batch.docs), max(d.pred_len for d in batch.docs))
        self.own_stash = torch.zeros(shape, device=self.sink.device)
        self.entropy_stash = torch.zeros(shape, device=self.sink.device)
        return True

    def commit(self, rows: Sequence[int], w: Windows, nll: torch.Tensor, entropy: torch.Tensor | None) -> None:
        # Stash only: the mode's reported score is formed after the batch, from a second scoring pass.
        if self.own_stash is None:
            return
        v = w.valid.to(self.sink.device)
        r = torch.tensor(rows, device=self.sink.device)[:, None].expand_as(v)[v]
        tp = w.tpos.to(self.sink.device)[v]
        self.own_stash[r, tp] = nll[v]
        self.entropy_stash[r, tp] = entropy[v]

    def after_batch(self, batch: TTTBatch, lora: BatchedLoRA) -> None:
        if self.own_stash is not None:
            self.rescore_batch(batch, lora)

    def base_changed(self) -> None:
        pass  # peers never outlive their batch

    def warmup_peers(self, lora: BatchedLoRA) -> BatchedLoRA | None:
        return lora if self.peers_on else None

    def rescore_batch(self, batch: TTTBatch, lora: BatchedLoRA) -> None:
        """Re-score the batch with in-batch peers in non-overlapping windows, blend with the stash, commit."""
        t, docs, bsz = self.ttt, batch.docs, len(batch.docs)
        dev = self.sink.device
        ids = pr2139_peer_ids(bsz, self.k, t.peer_seed, batch.batch_idx)
        spans = [pr2139_block_spans(d.pred_len, t.eval_seq_len) for d in docs]
        prob_sum = torch.zeros(self.own_stash.shape, dtype=torch.float64, device=dev)
        with torch.no_grad():
            for s in range(self.k - 1):  # peer slot s: row b runs through the live adapter of row ids[b, s]
                for block in range(max(len(sp) for sp in spans)):
                    rows = [b for b in range(bsz) if block < len(spans[b])]
                    w = build_windows(self.sink.tokens, [docs[b] for b in rows], [spans[b][block] for b in rows])
                    lora.peer_index = ids[rows, s].to(dev)
                    nll = self.sink.peer_nll(lora, w)
                    r = torch.tensor(rows, device=dev)[:, None].expand_as(nll)
                    v = w.valid.to(dev)
                    prob_sum.index_put_((r[v], w.tpos.to(dev)[v]), torch.exp(-nll.double())[v], accumulate=True)
        lora.peer_index = None
        # One window per document spanning all its targets: only used to address the stash and the meters.
        w = build_windows(self.sink.tokens, docs, [(0, 0, d.pred_len) for d in docs])
        r, tp = torch.arange(bsz, device=dev)[:, None], w.tpos.to(dev)
        final, routed = blend_nll(self.own_stash[r, tp], (prob_sum / (self.k - 1))[r, tp], self.entropy_stash[r, tp],
                                  t.peer_conf_threshold, t.peer_blend_w)
        self.sink.commit_ensemble(w, final, routed)
        self.sink.record_rescore(docs, w)
