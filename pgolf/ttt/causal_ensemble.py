"""peer_mode `causal`: peers only from batches this rank finished before the current one (legal by construction).

A fixed total order of documents (the queue order) is kept: a document uses
only adapters of documents whose scoring finished before its own scoring began.
On one rank the peers of a batch are drawn from the batch(es) the rank finished
just before (`PeerPool`); a rank's first batch, and the first batch after a
global SGD phase, are own-only. Finished adapters are frozen, so the peers'
probabilities for the whole batch are computed before its chunk loop (with the
scoring context rule), and each chunk's blend is its one committed score.
"""

from __future__ import annotations

from typing import Sequence

import torch

from pgolf.config import TTTConfig
from pgolf.ttt.ensemble import PeerEnsemble, ScoreSink, blend_nll, peer_generator
from pgolf.ttt.lora import BatchedLoRA, FrozenLoRA
from pgolf.ttt.windows import TTTBatch, Windows, build_windows, chunk_span, num_chunks


def causal_peer_ids(num_rows: int, pool_size: int, k: int, peer_seed: int, batch_idx: int) -> torch.Tensor:
    """K-1 distinct documents of the pool of finished adapters per row -> long [num_rows, min(K-1, pool_size)].

    Every pool member finished before any row of this batch started, so any
    choice is legal; the draw is seeded like #2139's for reproducibility.
    """
    num_peers = min(k - 1, pool_size)
    g = peer_generator(peer_seed, batch_idx)
    out = torch.empty(num_rows, num_peers, dtype=torch.long)
    for row in range(num_rows):
        out[row] = torch.randperm(pool_size, generator=g)[:num_peers]
    return out


class PeerPool:
    """Frozen adapters of the most recently finished documents on this rank.

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


class CausalEnsemble(PeerEnsemble):
    """The `Ensemble` of peer_mode `causal`."""

    compliant = True
    covers_every_target = True

    def __init__(self, ttt: TTTConfig, sink: ScoreSink):
        super().__init__(ttt, sink)
        self.pool = PeerPool(self.k)
        # Mean peer probability of each target of the current batch [bsz, max_pred]; None: an own-only batch.
        self.peer_prob: torch.Tensor | None = None

    def before_batch(self, batch: TTTBatch, chunk: int) -> bool:
        self.peer_prob = self.peer_probs(batch, chunk) if self.peers_on and self.pool.num_docs > 0 else None
        return self.peer_prob is not None

    def commit(self, rows: Sequence[int], w: Windows, nll: torch.Tensor, entropy: torch.Tensor | None) -> None:
        if self.peer_prob is None:  # nothing finished before this batch: own-only, still a committed score
            self.sink.commit_ensemble(w, nll, None)
            return
        t = self.ttt
        pp = self.peer_prob[torch.tensor(rows)[:, None], w.tpos].to(self.sink.device)  # [n, S] for w's targets
        self.sink.commit_ensemble(w, *blend_nll(nll, pp, entropy, t.peer_conf_threshold, t.peer_blend_w))

    def after_batch(self, batch: TTTBatch, lora: BatchedLoRA) -> None:
        # Only now are this batch's adapters final: they become peers of the batches this rank takes next.
        if self.peers_on:
            self.pool.add(lora.snapshot())

    def base_changed(self) -> None:
        self.pool.clear()  # finished adapters were fit to the old base

    def warmup_peers(self, lora: BatchedLoRA) -> FrozenLoRA | None:
        return lora.snapshot() if self.peers_on else None

    def peer_probs(self, batch: TTTBatch, chunk: int) -> torch.Tensor:
        """Mean over frozen peers of p_peer(actual next token) per doc target [bsz, max_pred] (float64, CPU).

        Peers are finished, so their prediction at t depends only on the doc's
        prefix: computed before the chunk loop, with the scoring context rule
        (targets of the first eval_seq_len//C chunks all see the doc from its
        start, so one forward covers them; later chunks use their own window).
        """
        t, docs = self.ttt, batch.docs
        pool = self.pool.adapters()
        ids = causal_peer_ids(len(docs), pool.num_docs, self.k, t.peer_seed, batch.batch_idx)
        ncs = [num_chunks(d.pred_len, chunk) for d in docs]
        first = t.eval_seq_len // chunk
        plans = [[(b, (0, 0, min(first * chunk, d.pred_len))) for b, d in enumerate(docs)]]
        for ci in range(first, max(ncs)):
            plans.append([(b, chunk_span(ci, d.pred_len, chunk, t.eval_seq_len))
                          for b, d in enumerate(docs) if ci < ncs[b]])
        prob_sum = torch.zeros(len(docs), max(d.pred_len for d in docs), dtype=torch.float64)
        with torch.no_grad():
            for s in range(ids.shape[1]):  # peer slot s: row b uses pool document ids[b, s]
                for plan in plans:
                    rows = [b for b, _ in plan]
                    w = build_windows(self.sink.tokens, [docs[b] for b in rows], [sp for _, sp in plan])
                    pool.peer_index = ids[rows, s].to(self.sink.device)
                    nll = self.sink.peer_nll(pool, w)
                    r = torch.tensor(rows)[:, None].expand_as(w.tpos)
                    prob_sum[r[w.valid], w.tpos[w.valid]] += torch.exp(-nll.double()).cpu()[w.valid]
        pool.peer_index = None
        return prob_sum / ids.shape[1]
