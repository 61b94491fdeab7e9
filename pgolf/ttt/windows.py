"""Documents, batches and the scoring windows of score-first TTT.

Documents are split at BOS, sorted by length and cut into batches of
`batch_size`; batches are processed longest first. A document of `pred_len`
targets is cut into chunks of C targets (`chunk_size_for`), and chunk ci is
scored by one forward over the window [max(0, end - eval_seq_len), end) that
ends at the chunk's end (`chunk_span`). `build_windows` gathers such windows for
several documents into one padded batch and `score_windows` runs it.

The score-first loop (`score_first.py`) and the peer ensembles both build their
forwards from these pieces, so a target is always scored with the same context
rule whichever adapters run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from pgolf.config import TTTConfig


@dataclass(frozen=True)
class DocSpan:
    index: int
    """Position in `val.docs` (the stream order)."""
    start: int
    """Stream index of the document's BOS."""
    length: int
    """Tokens from its BOS to the next BOS inclusive; targets are start+1 .. start+length-1."""

    @property
    def pred_len(self) -> int:
        return self.length - 1


@dataclass(frozen=True)
class TTTBatch:
    batch_idx: int
    """Index in ascending-length order (#2139's orig_batch_idx; it seeds the batch's peer draw)."""
    docs: tuple[DocSpan, ...]
    """Ascending length: row b is the b-th shortest."""

    @property
    def max_len(self) -> int:
        return max(d.length for d in self.docs)


def build_queue(docs: Sequence[tuple[int, int]], batch_size: int) -> list[TTTBatch]:
    """Sort docs by length (stable), cut into batches, order the batches by longest doc, descending (stable)."""
    # A one-token document (BOS followed by BOS) has no target.
    spans = sorted((DocSpan(i, int(s), int(n)) for i, (s, n) in enumerate(docs) if n > 1), key=lambda d: d.length)
    batches = [TTTBatch(bi, tuple(spans[i: i + batch_size])) for bi, i in enumerate(range(0, len(spans), batch_size))]
    return sorted(batches, key=lambda b: -b.max_len)


def chunk_size_for(max_doc_len: int, cfg: TTTConfig) -> int:
    """C for a batch whose longest doc has `max_doc_len` tokens: the first short step that fits, else chunk_size."""
    for doc_len, chunk in sorted(cfg.short_chunk_steps):
        if max_doc_len <= doc_len:
            return chunk
    return cfg.chunk_size


def num_chunks(pred_len: int, chunk: int) -> int:
    return (pred_len + chunk - 1) // chunk


def chunk_span(ci: int, pred_len: int, chunk: int, window_tokens: int) -> tuple[int, int, int]:
    """(window start, chunk start, chunk end) in doc target coordinates; the window ends at the chunk's end."""
    end = min((ci + 1) * chunk, pred_len)
    return max(0, end - window_tokens), ci * chunk, end


@dataclass
class Windows:
    """One forward's inputs for a set of docs and, per doc, the targets it scores."""
    x: torch.Tensor           # long [n, W] inputs (0 past a row's window)
    y: torch.Tensor           # long [n, W] next tokens
    cols: torch.Tensor        # long [n, S] column of each scored target
    valid: torch.Tensor       # bool [n, S]
    tpos: torch.Tensor        # long [n, S] doc target index (0 where invalid)
    stream_pos: torch.Tensor  # long [n, S] stream index of the target token
    spans: list[tuple[int, int, int]]


def build_windows(tokens: torch.Tensor, docs: Sequence[DocSpan], spans: Sequence[tuple[int, int, int]]) -> Windows:
    """Row i feeds doc targets [win_start, end) of docs[i] and scores targets [score_start, end)."""
    assert len(docs) == len(spans) > 0
    # Doc target t is stream token start+1+t, predicted from stream token start+t: a window over targets
    # [ws, end) therefore reads the stream from start+ws, one token more than its width (the last target).
    starts = torch.tensor([d.start + ws for d, (ws, _, _) in zip(docs, spans)])
    widths = torch.tensor([e - ws for ws, _, e in spans])
    offsets = torch.tensor([ss - ws for ws, ss, _ in spans])
    counts = torch.tensor([e - ss for _, ss, e in spans])
    width, num_scored = int(widths.max()), int(counts.max())
    col = torch.arange(width + 1)
    # Rows narrower than the widest read past their own window (clamped at the stream's end); those
    # columns are zeroed below and never scored, and the model is causal, so they cannot reach a score.
    gathered = tokens[(starts[:, None] + col[None]).clamp_(max=tokens.numel() - 1)].long()
    inside = col[None, :width] < widths[:, None]
    j = torch.arange(num_scored)
    valid = j[None] < counts[:, None]
    tpos = torch.where(valid, torch.tensor([ss for _, ss, _ in spans])[:, None] + j[None], 0)
    # Invalid slots point at a real column (clamped) so the gather stays in range; `valid` masks them out.
    return Windows(x=torch.where(inside, gathered[:, :width], 0), y=torch.where(inside, gathered[:, 1:], 0),
                   cols=(offsets[:, None] + j[None]).clamp_(max=width - 1), valid=valid, tpos=tpos,
                   stream_pos=torch.tensor([d.start + 1 for d in docs])[:, None] + tpos, spans=list(spans))


def entropy_nats(log_probs: torch.Tensor) -> torch.Tensor:
    """H = -sum_v p_v log p_v over the last dim."""
    return -(log_probs.exp() * log_probs).sum(-1)


def score_windows(fwd, adapters, w: Windows, device: torch.device, autocast, *,
                  want_entropy: bool, hint: torch.Tensor | None = None):
    """NLL [n, S] of the scored targets (carrying the graph if grad is enabled) and the own entropy (detached).

    With `hint` (long [n, S], -1 = none) a third value follows: log p(hint) [n, S] (detached) from the same
    softmax, for the n-gram tilt."""
    with autocast():
        logits = fwd(w.x.to(device), adapters=adapters)
    rows = torch.arange(w.x.shape[0], device=device)[:, None]
    cols = w.cols.to(device)
    # Only the scored columns go through the float32 log-softmax: a window's context columns are never scored.
    logp = torch.log_softmax(logits[rows, cols].float(), dim=-1)                # [n, S, V]
    nll = -logp.gather(-1, w.y.to(device)[rows, cols][..., None]).squeeze(-1)
    entropy = entropy_nats(logp.detach()) if want_entropy else None
    if hint is None:
        return nll, entropy
    return nll, entropy, logp.detach().gather(-1, hint.to(device).clamp(min=0)[..., None]).squeeze(-1)
