"""The static TTT schedule: which virtual rank scores which batch, fixed before any batch runs.

Under `ttt.schedule = "static"` the queue (length-sorted batches, longest
first) is split at the global-SGD pauses into segments, and each segment's
batches are dealt to N virtual ranks by one rule:

    in queue order, batch i goes to the virtual rank with the least work so
    far in this segment (ties: the lowest rank index), where a batch's work is
    its window tokens (`window_tokens`: rows x window width, summed over the
    batch's chunk forwards).

This is greedy longest-first balancing: the queue is already longest first, so
the big batches are spread first and the many short ones fill the gaps. A
segment ends at a pause, which every rank waits for, so each segment is
balanced on its own. Window tokens, not scored tokens, because a long
document's chunk runs a full window per few scored targets: balancing scored
tokens leaves, on the record's validation set (rebuilt from its log), the
busiest of 8 ranks with 10.7% more window tokens than the mean before the
pause; balancing window tokens leaves 0.4% there, 0.0% after it, and the
busiest rank's scored tokens 1.4% above the mean over the run
(bench/ttt_schedule_balance.py). With only a few batches per rank (the `cpu`
preset: 13 batches on 8 ranks) no rule balances: the largest batch alone
exceeds the mean.

The assignment depends only on the documents' lengths, the TTT settings, the
pause points and N, so it is the same on 1, 2 or 8 processes; each virtual
rank then processes its batches in queue order with its own carried state
(LoRA A, generator, peer pool), exactly as a real rank of an N-GPU run would.
"""

from __future__ import annotations

from typing import Sequence

from pgolf.config import TTTConfig
from pgolf.distributed import get_dist, virtual_ranks_here
from pgolf.ttt.windows import TTTBatch, chunk_size_for, num_chunks


def ranks_here(ttt: TTTConfig) -> tuple[int, Sequence[int]]:
    """(ranks the result is a function of, those this process runs): N virtual ranks, or the processes (dynamic)."""
    if ttt.schedule == "static":
        return ttt.virtual_ranks, virtual_ranks_here(ttt.virtual_ranks)
    return get_dist().world_size, [get_dist().rank]


def window_tokens(batch: TTTBatch, ttt: TTTConfig) -> int:
    """Tokens the batch's chunk forwards process: rows x width, where chunk ci of the batch is min((ci+1)C, P, W) wide.

    (P: the longest document's targets, whose last chunk ends at P; W: the window.) Per document that is
    C + 2C + ... up to W, then W per chunk, with the longest documents' last chunk at min(P, W).
    """
    c, w, p = chunk_size_for(batch.max_len, ttt), ttt.eval_seq_len, batch.max_len - 1
    top = num_chunks(p, c)
    total = 0
    for d in batch.docs:
        n = num_chunks(d.pred_len, c)
        k = min(n, w // c)  # chunks whose window still starts at the document's start
        total += c * k * (k + 1) // 2 + (n - k) * w - (n == top) * (min(n * c, w) - min(p, w))
    return total


def static_plan(queue: Sequence[TTTBatch], ends: Sequence[int], ttt: TTTConfig) -> list[list[list[int]]]:
    """Per segment (the queue cut before each index in `ends`, the last being len(queue)): the queue indices
    each virtual rank scores, in queue order."""
    plans = []
    for lo, hi in zip([0, *ends[:-1]], ends):
        costs = [window_tokens(b, ttt) for b in queue[lo:hi]]
        plans.append([[lo + i for i in mine] for mine in assign_batches(costs, ttt.virtual_ranks)])
    return plans


def batch_ranks(plans: Sequence[Sequence[Sequence[int]]], num_batches: int) -> list[int]:
    """The virtual rank of each queue batch under `static_plan`'s plans."""
    out = [0] * num_batches
    for segment in plans:
        for v, mine in enumerate(segment):
            for qi in mine:
                out[qi] = v
    return out


def assign_batches(costs: Sequence[int], num_virtual: int) -> list[list[int]]:
    """Positions (in `costs`' order) of the batches each of `num_virtual` virtual ranks scores."""
    load = [0] * num_virtual
    out: list[list[int]] = [[] for _ in range(num_virtual)]
    for i, cost in enumerate(costs):
        v = load.index(min(load))  # the first of the least-loaded ranks
        out[v].append(i)
        load[v] += cost
    return out
