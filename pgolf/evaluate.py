"""Evaluation: every validation target scored exactly once, into one `BpbMeter`.

Two diagnostic evaluations share one packing idea: a batch of targets becomes a
single packed row whose `cu_seqlens` starts a new segment at every BOS, so
attention never crosses a document boundary and a GPT forward over the row
gives the same NLL as running each piece on its own.

- `eval_packed` (the seed's rewritten `eval_val`): rank r owns the contiguous
  target range [T*r/W, T*(r+1)/W) and walks it in batches of
  local_batch_seqs * eval_seq_len targets; segments longer than eval_seq_len
  are split, and a document cut by a batch edge loses its earlier context.
  Nothing is truncated: the last batch of a rank is partial.
- `eval_sliding`: windows of seq_len tokens at a stride; each window scores only
  its last `stride` targets (the first window scores all of its targets, the
  last one whatever is left), so every target is scored once with at least
  seq_len - stride tokens of context (within its document).

Target j predicts `val.tokens[j+1]` from `val.tokens[:j+1]` and costs
`val.token_bytes[j+1]` bytes (0 for a BOS target), j = 0 .. T-1 with T = N-1.

`cmd_eval` (the `pgolf eval` verb) loads a run's artifact and reports roundtrip,
pre-quant, TTT and TTT + ensemble bpb with per-phase seconds; see its docstring.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from pgolf.bpb import BpbMeter
from pgolf.config import EvalConfig, RunConfig, load_json, parse_set_args
from pgolf.distributed import all_reduce_sum, get_dist, init_distributed, is_main
from pgolf.errors import ArtifactError, ConfigError, DataError, PgolfError

BOS_ID = 1
CU_BUCKET = 64
"""cu_seqlens entry counts are padded to a multiple of this (fewer distinct shapes to compile)."""

# A callback told about every scored span: (first target index, per-target NLL in nats [n] fp32).
ScoredHook = Callable[[int, Tensor], None]


# --------------------------------------------------------------------------- packing helpers
def packed_cu_seqlens(x: Tensor, max_seqlen: int, starts: list[int] | None = None,
                      bucket: int = CU_BUCKET) -> tuple[Tensor, int]:
    """Segment boundaries of one packed row of input tokens `x` [n].

    A segment starts at 0, at every BOS and at every index in `starts`; a
    segment longer than `max_seqlen` is split into max_seqlen pieces from its
    start. Returns (int32 cu_seqlens padded by repeating the total to a multiple
    of `bucket` entries, the longest segment).
    """
    n = int(x.numel())
    assert n > 0 and max_seqlen > 0
    cuts = set((x == BOS_ID).nonzero().flatten().tolist())
    cuts.add(0)
    cuts.update(s for s in (starts or []) if 0 <= s < n)
    ordered = sorted(cuts) + [n]
    bounds: list[int] = []
    for a, b in zip(ordered[:-1], ordered[1:]):
        bounds.extend(range(a, b, max_seqlen))
    bounds.append(n)
    longest = max(b - a for a, b in zip(bounds[:-1], bounds[1:]))
    pad = (-len(bounds)) % bucket
    bounds.extend([n] * pad)
    return torch.tensor(bounds, dtype=torch.int32), longest


def rank_target_range(num_targets: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous targets [start, end) rank `rank` scores (integer division, as the seed)."""
    return num_targets * rank // world_size, num_targets * (rank + 1) // world_size


def packed_batches(num_targets: int, cfg: EvalConfig, rank: int, world_size: int) -> list[tuple[int, int]]:
    """Target ranges [start, end) of this rank's packed batches, in order; the last may be partial."""
    local_batch_seqs = max(1, cfg.val_batch_tokens // world_size // cfg.eval_seq_len)
    batch_targets = local_batch_seqs * cfg.eval_seq_len
    start, end = rank_target_range(num_targets, rank, world_size)
    return [(s, min(s + batch_targets, end)) for s in range(start, end, batch_targets)]


def sliding_windows(num_targets: int, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
    """(window_start, score_start, end) target indices of every sliding window.

    Windows start at multiples of `stride` and cover [window_start, end) with
    end = min(window_start + seq_len, num_targets); each scores its last `stride`
    targets [window_start + seq_len - stride, end), the first window all of them.
    The scored ranges tile [0, num_targets) exactly once, and stride == seq_len
    gives plain non-overlapping windows.
    """
    assert 0 < stride <= seq_len, (stride, seq_len)
    if num_targets <= 0:
        return []
    out = [(0, 0, min(seq_len, num_targets))]
    window_start = stride
    while window_start + seq_len - stride < num_targets:
        out.append((window_start, window_start + seq_len - stride, min(window_start + seq_len, num_targets)))
        window_start += stride
    return out


# --------------------------------------------------------------------------- scoring
def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _autocast(device: torch.device):
    """bf16 autocast on CUDA (the model keeps logits and CE in fp32); nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _score_row(model: nn.Module, x: Tensor, y: Tensor, cu_seqlens: Tensor, max_seqlen: int) -> Tensor:
    """Per-target NLL (nats, fp32) [n] of one packed row."""
    device = _model_device(model)
    with _autocast(device):
        nll = model(x.to(device)[None], y.to(device)[None], cu_seqlens=cu_seqlens.to(device),
                    max_seqlen=max_seqlen, reduction="none")
    return nll.reshape(-1).float()


def _finish(meter: BpbMeter) -> BpbMeter:
    meter.all_reduce()
    return meter


def eval_packed(model: nn.Module, val, cfg: EvalConfig, meter: BpbMeter | None = None, *,
                on_scored: ScoredHook | None = None) -> BpbMeter:
    """Score all `val.num_targets` targets in packed batches; returns the all-reduced meter.

    With `cfg.sliding_stride > 0` this is `eval_sliding(model, val, cfg.eval_seq_len,
    cfg.sliding_stride)` instead (the config's switch). `meter`, if given, must hold only
    this rank's sums: it is all-reduced at the end. `on_scored(first_target, nll)` sees
    every scored span (for NLL dumps). Every rank must call this (collective).
    """
    if cfg.sliding_stride > 0:
        batch_tokens = max(cfg.eval_seq_len, cfg.val_batch_tokens // get_dist().world_size)
        return eval_sliding(model, val, cfg.eval_seq_len, cfg.sliding_stride, meter=meter,
                            batch_tokens=batch_tokens, on_scored=on_scored)
    meter = meter if meter is not None else BpbMeter()
    d = get_dist()
    tokens, token_bytes = val.tokens, val.token_bytes
    with _eval_mode(model):
        for start, end in packed_batches(val.num_targets, cfg, d.rank, d.world_size):
            x = tokens[start:end]
            y = tokens[start + 1:end + 1]
            cu_seqlens, max_seqlen = packed_cu_seqlens(x, cfg.eval_seq_len)
            nll = _score_row(model, x, y, cu_seqlens, max_seqlen)
            meter.add(nll, token_bytes[start + 1:end + 1].to(nll.device))
            if on_scored is not None:
                on_scored(start, nll)
    return _finish(meter)


def eval_sliding(model: nn.Module, val, seq_len: int, stride: int, *, meter: BpbMeter | None = None,
                 batch_tokens: int = 65_536, on_scored: ScoredHook | None = None) -> BpbMeter:
    """Sliding-window eval: windows of `seq_len` at `stride`, each target scored once.

    Several windows are packed into one row of at most max(batch_tokens, seq_len)
    tokens, each window its own segment(s) (a window starts a segment; so does each
    BOS inside it). Ranks take contiguous runs of windows. Collective.
    """
    if not 0 < stride <= seq_len:
        raise ConfigError(f"eval.sliding_stride: {stride} must be in (0, seq_len={seq_len}]")
    meter = meter if meter is not None else BpbMeter()
    d = get_dist()
    windows = sliding_windows(val.num_targets, seq_len, stride)
    lo, hi = rank_target_range(len(windows), d.rank, d.world_size)
    mine = windows[lo:hi]
    per_row = max(1, batch_tokens // seq_len)
    tokens, token_bytes = val.tokens, val.token_bytes
    with _eval_mode(model):
        for i in range(0, len(mine), per_row):
            group = mine[i:i + per_row]
            xs, ys, starts, offset = [], [], [], 0
            for ws, _, end in group:
                xs.append(tokens[ws:end])
                ys.append(tokens[ws + 1:end + 1])
                starts.append(offset)
                offset += end - ws
            x, y = torch.cat(xs), torch.cat(ys)
            cu_seqlens, max_seqlen = packed_cu_seqlens(x, seq_len, starts)
            nll_row = _score_row(model, x, y, cu_seqlens, max_seqlen)
            for (ws, ss, end), row_start in zip(group, starts):
                nll = nll_row[row_start + ss - ws:row_start + end - ws]
                meter.add(nll, token_bytes[ss + 1:end + 1].to(nll.device))
                if on_scored is not None:
                    on_scored(ss, nll)
    return _finish(meter)
