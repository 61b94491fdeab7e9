"""Phased global SGD: adapt the whole base model on documents that have already been scored.

Per-document LoRA forgets everything between documents. The record adds a
slower channel (PR #1610): once the first P documents of the evaluation queue
are fully scored, scoring pauses, the *base* model is trained with plain SGD on
exactly those documents' tokens, the per-document adapters are rebuilt, and
scoring resumes on the rest of the queue with the adapted base. Every token it
trains on was scored before the pause, so score-before-update holds (C3), and
the documents scored later depend only on documents ordered before them (C1).

With `phased_num_phases = n` the boundaries are P(i+1)/n documents, and the
pause follows the record's rule. There, ranks claim queue batches from a shared
counter and add each finished batch's documents to a shared count; the rank
whose batch lifts the count to the boundary raises a pause flag, and every
other rank pauses when it finishes the batch it is on. `pause_points` replays
that rule on the static claim order (batches finish in the order they were
claimed): the pause comes after the batch that reaches the boundary plus one
in-flight batch per other rank, and at least one batch per rank after the
previous pause. On the record's queue that is 112 batches / 2,672 documents on
8 ranks (its log's `pd:2672`) and 105 / 2,504 on one. On GPUs a slow batch can
finish out of claim order and move the record's pause by a batch; here it never
moves, so scores do not depend on timing. A pause that would leave nothing to
score is dropped.

The SGD set is the record's: every document scored so far (all ranks, all
phases), sorted by (ascending batch index, row in the batch), cut to the
boundary. The queue runs longest first, so the stream runs from the shortest
scored documents to the longest, and the longest scored documents beyond the
boundary are not trained on.

SGD (the record's `train_val_ttt_global_sgd_distributed`): all base parameters,
SGD(lr, momentum), no weight decay; the documents' tokens are concatenated and
cut into chunks of `global_chunk_tokens`; each chunk trains on its
floor(chunk/eval_seq_len) whole sequences of eval_seq_len tokens (split across
ranks, packed with a segment at every BOS); cosine LR over the chunks; the last
chunk is skipped; gradients are averaged over ranks, then clipped.

Under the static schedule the ranks are the N virtual ranks: each computes
the gradient of its own share of sequences, and the N gradients are gathered
and added in virtual-rank order (`distributed.ordered_sum`), on one process as
on eight, so the adapted base is the same bits whatever the process count.
Under the dynamic schedule the ranks are the processes (the record
all-reduced; the gather and the fixed order give the same average).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from typing import Callable, Sequence

import torch
from torch import nn

from pgolf.config import TTTConfig
from pgolf.device import policy_for
from pgolf.distributed import gather_ranks, ordered_sum
from pgolf.loader import build_cu_seqlens
from pgolf.ttt.rank_schedule import ranks_here


def phase_boundaries(prefix_docs: int, num_phases: int, total_docs: int) -> list[int]:
    """Document counts after which scoring pauses for SGD; boundaries that leave nothing to score are dropped."""
    if num_phases <= 0 or prefix_docs <= 0:
        return []
    prefix = min(prefix_docs, total_docs)
    out = [prefix * (i + 1) // num_phases for i in range(num_phases)]
    return sorted({b for b in out if 0 < b < total_docs})


def pause_points(batch_sizes: Sequence[int], boundaries: Sequence[int],
                 num_ranks: int = 1) -> list[tuple[int, int]]:
    """(queue batches scored before the pause, documents global SGD trains on) per boundary (module docstring)."""
    out = []
    done = list(itertools.accumulate(batch_sizes))  # documents in the first i+1 batches
    last = 0
    for boundary in boundaries:
        reach = next(i + 1 for i, n in enumerate(done) if n >= boundary)
        last = min(max(reach, last + 1) + num_ranks - 1, len(done))
        if last == len(done):
            break
        out.append((last, boundary))
    return out


def sgd_stream(tokens: torch.Tensor, spans: Sequence[tuple[int, int]]) -> torch.Tensor:
    """One token stream: the documents' spans concatenated, each with its trailing BOS.

    Each doc `(start, length)` spans [BOS .. next BOS], so consecutive documents
    meet as `BOS BOS`, exactly as in the record: every junction adds one
    BOS -> BOS target (a one-token segment once packed) and shifts the chunk
    and sequence boundaries by one token per document. Dropping the duplicate
    would be tidier but trains on a different stream than the record's.
    """
    if not spans:
        return tokens[:0]
    return torch.cat([tokens[s: s + n] for s, n in spans])


def cosine_lr(base_lr: float, ci: int, num_chunks: int) -> float:
    """Cosine from base_lr at chunk 0 to 0 at chunk num_chunks-1 (the skipped last chunk)."""
    denom = max(num_chunks - 1, 1)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * ci / denom))


def run_global_sgd(model: nn.Module, stream: torch.Tensor, cfg: TTTConfig, *,
                   autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
                   on_step: Callable[[int, int, float], None] | None = None) -> dict:
    """Train every base parameter on `stream` (see the module docstring). Returns counts and seconds.

    Every rank calls this with the same stream; each (virtual) rank trains on its
    share of each chunk's sequences and the gradients are averaged every step
    (a rank without sequences contributes zeros). `autocast` defaults to the device policy's.
    """
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    autocast = autocast or policy_for(device).autocast
    seq_len = cfg.eval_seq_len
    num_targets = stream.numel() - 1
    num_chunks = (num_targets + cfg.global_chunk_tokens - 1) // cfg.global_chunk_tokens
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=cfg.global_lr, momentum=cfg.global_momentum, weight_decay=0.0)
    num_steps = 0
    num_ranks, here = ranks_here(cfg)
    model.train()
    try:
        for ci in range(num_chunks - 1):  # the last chunk is skipped
            lo = ci * cfg.global_chunk_tokens
            hi = min(lo + cfg.global_chunk_tokens, num_targets)
            num_seqs = (hi - lo) // seq_len
            if num_seqs <= 0:
                continue
            lr = cosine_lr(cfg.global_lr, ci, num_chunks)
            for group in opt.param_groups:
                group["lr"] = lr
            for _ in range(cfg.global_epochs):
                grads = []
                for v in here:
                    opt.zero_grad(set_to_none=True)
                    s0 = lo + (num_seqs * v // num_ranks) * seq_len
                    s1 = lo + (num_seqs * (v + 1) // num_ranks) * seq_len
                    if s1 > s0:
                        x = stream[s0:s1]
                        y = stream[s0 + 1: s1 + 1]
                        cu, max_len = build_cu_seqlens(x, seq_len)
                        with autocast():
                            loss = model(x.to(device)[None], y.to(device)[None], cu_seqlens=cu.to(device),
                                         max_seqlen=max_len)
                        loss.backward()
                    grads.append([torch.zeros_like(p) if p.grad is None else p.grad for p in params])
                for i, p in enumerate(params):  # the (virtual) ranks' gradients, added in rank order
                    p.grad = ordered_sum(gather_ranks(torch.stack([g[i] for g in grads]))).div_(num_ranks)
                if cfg.global_grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.global_grad_clip)
                opt.step()
                num_steps += 1
            if on_step is not None:
                on_step(ci, num_chunks, lr)
    finally:
        opt.zero_grad(set_to_none=True)
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        model.eval()
    return {"num_chunks": num_chunks, "num_steps": num_steps, "num_tokens": int(stream.numel()),
            "seconds": time.perf_counter() - t0}
