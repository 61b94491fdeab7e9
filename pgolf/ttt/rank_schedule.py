"""The static TTT schedule: which virtual rank scores which batch, fixed before any batch runs.

Under `ttt.schedule = "static"` the queue (length-sorted batches, longest
first) is split at the global-SGD pauses into segments, and each segment's
batches are dealt to N virtual ranks by one rule:

    in queue order, batch i goes to the virtual rank with the fewest scored
    tokens so far in this segment (ties: the lowest rank index).

This is greedy longest-first balancing: the queue is already longest first, so
the big batches are spread first and the many short ones fill the gaps. A
segment ends at a pause, which every rank waits for, so each segment is
balanced on its own. On the record's validation set (rebuilt from its log) the
busiest of 8 virtual ranks scores 0.4% more tokens than the mean (1.2% before
the pause, 0.03% after), where round-robin by batch index gives 10.8% (33.6%
before the pause); bench/ttt_schedule_balance.py. With fewer batches than a few
per rank (the `cpu` preset: 13 batches on 8 ranks) no rule balances: the
largest batch alone exceeds the mean.

The assignment depends only on the documents' lengths, the batch size, the
pause points and N, so it is the same on 1, 2 or 8 processes; each virtual
rank then processes its batches in queue order with its own carried state
(LoRA A, generator, peer pool), exactly as a real rank of an N-GPU run would.
"""

from __future__ import annotations

from typing import Sequence


def assign_batches(batch_tokens: Sequence[int], num_virtual: int) -> list[list[int]]:
    """Positions (in `batch_tokens`' order) of the batches each of `num_virtual` virtual ranks scores."""
    load = [0] * num_virtual
    out: list[list[int]] = [[] for _ in range(num_virtual)]
    for i, tokens in enumerate(batch_tokens):
        v = load.index(min(load))  # the first of the least-loaded ranks
        out[v].append(i)
        load[v] += tokens
    return out
