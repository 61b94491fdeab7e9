"""Sliding-window evaluation (`eval.sliding_stride > 0`): every target scored once, with at least
seq_len - stride tokens of context within its document.

A diagnostic that no record uses: `evaluate.eval_packed` imports it by name when the config asks for
a stride, so a packed file carries it only then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from pgolf.bpb import BpbMeter
from pgolf.distributed import get_dist
from pgolf.errors import ConfigError
from pgolf.evaluate import ScoredHook, all_reduced, eval_mode, rank_target_range, score_row
from pgolf.loader import build_cu_seqlens

if TYPE_CHECKING:
    from pgolf.ngram_tilt import NgramTilt


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


def eval_sliding(model: nn.Module, val, seq_len: int, stride: int, *, meter: BpbMeter | None = None,
                 batch_tokens: int = 65_536, on_scored: ScoredHook | None = None,
                 tilt: NgramTilt | None = None) -> BpbMeter:
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
    with eval_mode(model):
        for i in range(0, len(mine), per_row):
            group = mine[i:i + per_row]
            xs, ys, starts, offset = [], [], [], 0
            for ws, _, end in group:
                xs.append(tokens[ws:end])
                ys.append(tokens[ws + 1:end + 1])
                starts.append(offset)
                offset += end - ws
            x, y = torch.cat(xs), torch.cat(ys)
            cu_seqlens, max_seqlen = build_cu_seqlens(x, seq_len, starts=starts)
            targets = scored = None
            if tilt is not None:
                targets = torch.cat([torch.arange(ws, end) for ws, _, end in group])
                scored = torch.cat([torch.arange(ws, end) >= ss for ws, ss, end in group])
            nll_row = score_row(model, x, y, cu_seqlens, max_seqlen, tilt, targets, scored)
            for (ws, ss, end), row_start in zip(group, starts):
                nll = nll_row[row_start + ss - ws:row_start + end - ws]
                meter.add(nll, token_bytes[ss + 1:end + 1].to(nll.device))
                if on_scored is not None:
                    on_scored(ss, nll)
    return all_reduced(meter)
