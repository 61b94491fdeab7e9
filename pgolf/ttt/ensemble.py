"""Peer-LoRA ensemble: the interface the score-first loop calls, and the blend every mode scores with.

For a token whose own predictive entropy H_t (nats, from the own distribution
only, never the target) is at least `peer_conf_threshold`, the scored
distribution is the mixture

    p_t = w * p_own,t + (1 - w) * mean_k p_peer_k,t         (w = peer_blend_w)

and otherwise p_t = p_own,t. A convex mixture of full softmax distributions is
a normalized distribution over the whole vocabulary, and its probability at the
target is the mixture of the members' probabilities at the target, so keeping
one number per peer and position is exact (`blended_distribution` builds the
full vector for audits).

The modes (`ttt.peer_mode`, mapped to a class by `peer_modes.make_ensemble`)
differ only in *which* adapters are peers and *when* they are used:

- `off` (`own_only.OwnOnly`): no peers; the committed score is the own score.
- `causal` (`causal_ensemble.CausalEnsemble`, legal by construction): peers are
  adapters of documents whose scoring finished before this batch began; the
  blend is the one committed score.
- `pr2139` (`pr2139_ensemble.PR2139Ensemble`, #2139 as submitted,
  non-compliant): peers are the other documents of the same batch, and the
  batch is re-scored after its chunk loop. Reproduced for comparison only.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol, Sequence

import torch

from pgolf.ttt.windows import entropy_nats

if TYPE_CHECKING:
    from pgolf.config import TTTConfig
    from pgolf.ttt.lora import BatchedLoRA, FrozenLoRA
    from pgolf.ttt.windows import DocSpan, TTTBatch, Windows

MIN_PROB = 1e-40
"""Floor of the blended probability before the log (#2139's clamp)."""


# --------------------------------------------------------------------------- the interface


class ScoreSink(Protocol):
    """What the score-first loop lends an ensemble: the model's forward and the ensemble's meter."""

    tokens: torch.Tensor
    """The validation stream (CPU); `windows.build_windows` reads it."""
    device: torch.device

    def peer_nll(self, adapters: BatchedLoRA | FrozenLoRA, w: Windows) -> torch.Tensor:
        """NLL [n, S] of `w`'s scored targets through `adapters`, routed by their `peer_index`."""

    def commit_ensemble(self, w: Windows, final: torch.Tensor, routed: torch.Tensor | None) -> None:
        """Commit `final` [n, S] as the ensemble's score of `w`'s valid targets (`routed`: those blended)."""

    def record_rescore(self, docs: Sequence[DocSpan], w: Windows) -> None:
        """Count a second score of `w`'s valid targets (dump counts, trace); only a non-compliant mode does this."""


class Ensemble(Protocol):
    """One peer mode, driven by the score-first loop through four hooks.

    Per batch: `before_batch`, then per chunk `commit` (right after the own
    score is committed and before any update that uses the chunk), then
    `after_batch` once the batch's adapters are final. `base_changed` runs when
    global SGD has adapted the base model.
    """

    compliant: bool
    """C1 (causality across documents) and C4 (one score per target) hold."""
    covers_every_target: bool
    """The ensemble commits a score for every target (False: only for some batches)."""
    peers_on: bool
    """Peers take part (a mode with peers and K > 1); False: the committed score is the own score."""

    def before_batch(self, batch: TTTBatch, chunk: int) -> bool:
        """Prepare `batch` (scored in chunks of `chunk` targets); True if `commit` needs the own entropy."""

    def commit(self, rows: Sequence[int], w: Windows, nll: torch.Tensor, entropy: torch.Tensor | None) -> None:
        """The own scores `nll` [n, S] (detached) of a chunk: row i of `w` is batch row rows[i]."""

    def after_batch(self, batch: TTTBatch, lora: BatchedLoRA) -> None:
        """The batch's chunk loop is done; `lora` holds its final adapters (peer_index None)."""

    def base_changed(self) -> None:
        """Global SGD changed the base model: adapters fit to the old base are no peers any more."""

    def warmup_peers(self, lora: BatchedLoRA) -> BatchedLoRA | FrozenLoRA | None:
        """Adapters of the kind this mode's peer forwards run through (for compile warmup); None: no peer forwards."""


# --------------------------------------------------------------------------- the blend


class PeerEnsemble:
    """What every mode with peers starts from: its settings, its sink and whether peers run at all (K > 1)."""

    def __init__(self, ttt: TTTConfig, sink: ScoreSink):
        self.ttt, self.sink = ttt, sink
        self.k = ttt.peer_k
        self.peers_on = self.k > 1


def peer_generator(peer_seed: int, batch_idx: int) -> torch.Generator:
    """The RNG of one batch's peer draw: #2139's seeding, masked to the 31 bits manual_seed accepts everywhere."""
    g = torch.Generator(device="cpu")
    g.manual_seed((peer_seed * 1013 + batch_idx) & 0x7FFFFFFF)
    return g


def blend_nll(nll_own: torch.Tensor, peer_prob_mean: torch.Tensor, entropy: torch.Tensor,
              threshold: float, blend_w: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Committed NLL per target and the routed mask.

    nll_own, entropy: the own distribution's NLL at the target and its entropy;
    peer_prob_mean: mean over peers of p_peer(target). Unrouted tokens keep
    `nll_own` bit for bit, so a threshold above log V reproduces own-only TTT.
    """
    routed = entropy >= threshold
    # Mixed in float64 (as #2139 does): exp(-nll) of a very unlikely target underflows float32.
    p_own = torch.exp(-nll_own.double())
    p_mix = blend_w * p_own + (1.0 - blend_w) * peer_prob_mean.double()
    nll_mix = -torch.log(p_mix.clamp_min(MIN_PROB))
    return torch.where(routed, nll_mix.to(nll_own.dtype), nll_own), routed


def blended_distribution(own_logits: torch.Tensor, peer_logits: torch.Tensor | None,
                         threshold: float, blend_w: float) -> torch.Tensor:
    """The full scored distribution at one position, float64 [V]: what `blend_nll` scores at the target.

    own_logits [V]; peer_logits [num_peers, V] or None (own-only).
    """
    own_logp = torch.log_softmax(own_logits.double(), -1)
    p_own = own_logp.exp()
    if peer_logits is None or peer_logits.shape[0] == 0:
        return p_own
    if float(entropy_nats(own_logp)) < threshold:
        return p_own
    p_peer = torch.softmax(peer_logits.double(), -1).mean(0)
    return blend_w * p_own + (1.0 - blend_w) * p_peer


def max_entropy_nats(vocab_size: int) -> float:
    """log V: no distribution over V tokens has more entropy; a threshold above it routes nothing."""
    return math.log(vocab_size)
