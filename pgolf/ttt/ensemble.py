"""Peer-LoRA ensemble: blend a document's own TTT prediction with other documents' adapters.

For a token whose own predictive entropy H_t (nats, from the own distribution
only, never the target) is at least `peer_conf_threshold`, the scored
distribution is the mixture

    p_t = w * p_own,t + (1 - w) * mean_k p_peer_k,t         (w = peer_blend_w)

and otherwise p_t = p_own,t. A convex mixture of full softmax distributions is
a normalized distribution over the whole vocabulary, and its probability at the
target is the mixture of the members' probabilities at the target, so keeping
one number per peer and position is exact (`blended_distribution` builds the
full vector for audits).

Two modes differ only in *which* adapters are peers and *when* they are used:

- `causal` (legal by construction): a fixed total order of documents; document q
  uses only adapters of documents whose scoring finished before q's scoring
  began. On one rank the peers of batch b are drawn from the batch(es) this rank
  finished just before (`PeerPool`); a rank's first batch is own-only. The peer
  predictions are computed before q's chunk loop (frozen adapters, the same
  sliding-window context as scoring) and the blend is the one committed score.
- `seed` (#2139 as submitted; non-compliant): peers are the other documents of
  the same batch, drawn after the batch's chunk loop, and the whole batch is
  re-scored in non-overlapping windows (`seed_peer_ids`, `seed_block_spans`).
  Document p then depends on q and q on p (C1) and tokens are scored twice (C4).

The loops that run the model live in `pgolf.ttt.score_first`; this module holds
the pure parts: peer selection, the pool of finished adapters and the blend.
"""

from __future__ import annotations

import math

import torch

from pgolf.ttt.lora import FrozenLoRA

MIN_PROB = 1e-40
"""Floor of the blended probability before the log (the seed's clamp)."""


def _generator(peer_seed: int, batch_idx: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed((peer_seed * 1013 + batch_idx) & 0x7FFFFFFF)
    return g


def seed_peer_ids(bsz: int, k: int, peer_seed: int, batch_idx: int) -> torch.Tensor:
    """#2139's draw: for each row in order, K-1 distinct other rows of the same batch -> long [bsz, K-1]."""
    assert 2 <= k <= bsz, f"need 2 <= K <= bsz, got K={k}, bsz={bsz}"
    g = _generator(peer_seed, batch_idx)
    out = torch.empty(bsz, k - 1, dtype=torch.long)
    for row in range(bsz):
        others = torch.tensor([i for i in range(bsz) if i != row], dtype=torch.long)
        out[row] = others[torch.randperm(bsz - 1, generator=g)[: k - 1]]
    return out


def causal_peer_ids(num_rows: int, pool_size: int, k: int, peer_seed: int, batch_idx: int) -> torch.Tensor:
    """K-1 distinct documents of the pool of finished adapters per row -> long [num_rows, min(K-1, pool_size)].

    Every pool member finished before any row of this batch started, so any
    choice is legal; the draw is seeded like the seed's for reproducibility.
    """
    num_peers = min(k - 1, pool_size)
    g = _generator(peer_seed, batch_idx)
    out = torch.empty(num_rows, num_peers, dtype=torch.long)
    for row in range(num_rows):
        out[row] = torch.randperm(pool_size, generator=g)[:num_peers]
    return out


def seed_block_spans(pred_len: int, window_tokens: int) -> list[tuple[int, int, int]]:
    """#2139's peer re-scoring windows: non-overlapping blocks [c, c+window) as (win_start, score_start, score_end)."""
    return [(c, c, min(c + window_tokens, pred_len)) for c in range(0, pred_len, window_tokens)]


class PeerPool:
    """Frozen adapters of the most recently finished documents on this rank (the causal mode's peers).

    After a batch finishes, `add(snapshot)` makes its adapters available to the
    *next* batch. The pool keeps the newest snapshots holding at least K-1
    documents (older ones are dropped), so a small batch does not leave the next
    batch short of peers.
    """

    def __init__(self, k: int):
        self.k = k
        self._parts: list[FrozenLoRA] = []

    def add(self, snap: FrozenLoRA) -> None:
        self._parts.insert(0, snap)
        kept, total = [], 0
        for part in self._parts:
            if total >= self.k - 1:
                break
            kept.append(part)
            total += part.num_docs
        self._parts = kept

    def clear(self) -> None:
        self._parts = []

    @property
    def num_docs(self) -> int:
        return sum(p.num_docs for p in self._parts)

    def adapters(self) -> FrozenLoRA | None:
        return FrozenLoRA.concat(self._parts) if self._parts else None


def entropy_nats(log_probs: torch.Tensor) -> torch.Tensor:
    """H = -sum_v p_v log p_v over the last dim."""
    return -(log_probs.exp() * log_probs).sum(-1)


def blend_nll(nll_own: torch.Tensor, peer_prob_mean: torch.Tensor, entropy: torch.Tensor,
              threshold: float, blend_w: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Committed NLL per target and the routed mask.

    nll_own, entropy: the own distribution's NLL at the target and its entropy;
    peer_prob_mean: mean over peers of p_peer(target). Unrouted tokens keep
    `nll_own` bit for bit, so a threshold above log V reproduces own-only TTT.
    """
    routed = entropy >= threshold
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
