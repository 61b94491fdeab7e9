"""Causal attention over packed documents: one signature, a fast GPU path and a reference path.

A training or evaluation row is a concatenation of documents, each starting with
BOS. `cu_seqlens` (int32, `[num_docs + 1]`, the cumulative document boundaries)
says where each document starts; a token may attend to earlier tokens of its own
document only. On CUDA with FlashAttention 3 importable this is
`flash_attn_varlen_func` (or the dense `flash_attn_func` when there are no
boundaries); everywhere else it is PyTorch SDPA with a block-diagonal causal
mask. Both paths share this module's single entry point, `attention`, and a GPU
test checks that they agree.

Shapes follow FlashAttention: q `[B, T, H, D]`, k and v `[B, T, Hkv, D]` with
`H % Hkv == 0` (grouped-query attention: query head h reads KV head
`h // (H // Hkv)`), output `[B, T, H, D]`. With `cu_seqlens`, `B == 1`. The
softmax scale is the default `1/sqrt(D)`.

The implementation (`IMPL`) is chosen once at import; `_override_impl` exists
for tests that need to compare the two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # FlashAttention 3 ships as `flash_attn_interface` (the hopper build).
    import flash_attn_interface as _fa3  # type: ignore[import-not-found]
except Exception:  # ImportError, or a broken CUDA extension on a CPU-only box
    _fa3 = None

IMPLS = ("fa3", "sdpa")

# The SDPA path materializes a [T_chunk, T_chunk] mask and score matrix per call, so
# packed rows are cut into chunks of whole documents of at most this many tokens
# (a single longer document gets a chunk of its own and the mask-free causal kernel).
# On CPU (cpu preset, 4096-token rows) 512 was ~9x faster than one 4096 chunk, and
# ~2x faster than one call per document when documents are short (~40 tokens).
_SDPA_CHUNK_TOKENS = 512


def _choose_impl() -> str:
    return "fa3" if (_fa3 is not None and torch.cuda.is_available()) else "sdpa"


IMPL: str = _choose_impl()


class _ImplOverride:
    """Switches `IMPL` immediately; used as a context manager it switches back on exit."""

    def __init__(self, name: str):
        global IMPL
        assert name in IMPLS, f"unknown attention impl {name!r}"
        assert name != "fa3" or _fa3 is not None, "flash_attn_interface is not importable here"
        self.previous = IMPL
        IMPL = name

    def __enter__(self) -> "_ImplOverride":
        return self

    def __exit__(self, *exc) -> None:
        global IMPL
        IMPL = self.previous


def _override_impl(name: str) -> _ImplOverride:
    """Force `"fa3"` or `"sdpa"` (tests). `with _override_impl("sdpa"): ...` restores afterwards."""
    return _ImplOverride(name)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
              cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None) -> torch.Tensor:
    """Causal (grouped-query) attention; with `cu_seqlens`, never across a document boundary."""
    assert q.ndim == 4 and k.shape == v.shape and k.shape[:2] == q.shape[:2], (q.shape, k.shape, v.shape)
    assert q.shape[-1] == k.shape[-1] and q.shape[2] % k.shape[2] == 0, (q.shape, k.shape)
    if cu_seqlens is not None:
        assert q.shape[0] == 1, "packed attention (cu_seqlens) takes one row, B == 1"
    if IMPL == "fa3":
        return _attention_fa3(q, k, v, cu_seqlens, max_seqlen)
    return _attention_sdpa(q, k, v, cu_seqlens)


# --------------------------------------------------------------------------- FlashAttention 3
def _attention_fa3(q, k, v, cu_seqlens, max_seqlen):
    out_dtype = q.dtype
    if q.dtype not in (torch.bfloat16, torch.float16):
        # FA3 has no fp32 kernel; outside autocast we compute in bf16 and hand back fp32.
        q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    if cu_seqlens is None:
        y = _fa3.flash_attn_func(q, k, v, causal=True)
    else:
        cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
        if max_seqlen is None:
            max_seqlen = int((cu[1:] - cu[:-1]).max().item())
        y = _fa3.flash_attn_varlen_func(q[0], k[0], v[0], cu_seqlens_q=cu, cu_seqlens_k=cu,
                                        max_seqlen_q=max_seqlen, max_seqlen_k=max_seqlen, causal=True)
        y = (y[0] if isinstance(y, tuple) else y)[None]
    if isinstance(y, tuple):  # some FA3 builds also return the log-sum-exp
        y = y[0]
    return y.to(out_dtype)


# --------------------------------------------------------------------------- SDPA reference
def _expand_kv(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, T, Hkv, D] -> [B, T, H, D]: each KV head serves a contiguous group of query heads."""
    group = num_heads // t.shape[2]
    return t if group == 1 else t.repeat_interleave(group, dim=2)


def _sdpa(q, k, v, mask):
    """q/k/v [B, T, H, D] (k/v already expanded); mask None = plain causal."""
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       attn_mask=mask, is_causal=mask is None)
    return y.transpose(1, 2)


def _doc_chunks(bounds: list[int], max_chunk_tokens: int) -> list[tuple[int, int, list[int]]]:
    """Greedily group consecutive documents into chunks; returns (start, end, inner doc starts)."""
    chunks = []
    start, starts = bounds[0], [bounds[0]]
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b - start > max_chunk_tokens and a > start:
            chunks.append((start, a, starts))
            start, starts = a, [a]
        elif a != starts[-1]:
            starts.append(a)
    chunks.append((start, bounds[-1], starts))
    return chunks


def block_causal_mask(doc_starts: list[int], start: int, end: int, device) -> torch.Tensor:
    """Bool [T, T] mask (True = may attend) for tokens start..end-1 split at `doc_starts`."""
    pos = torch.arange(start, end, device=device)
    starts = torch.tensor(doc_starts, device=device)
    doc_id = torch.searchsorted(starts, pos, right=True)
    same_doc = doc_id[:, None] == doc_id[None, :]
    causal = pos[:, None] >= pos[None, :]
    return same_doc & causal


def _attention_sdpa(q, k, v, cu_seqlens):
    num_heads = q.shape[2]
    k, v = _expand_kv(k, num_heads), _expand_kv(v, num_heads)
    if cu_seqlens is None:
        return _sdpa(q, k, v, None)
    seq_len = q.shape[1]
    # Padding repeats the last boundary; dropping duplicates leaves the real documents.
    bounds = sorted(set(int(b) for b in cu_seqlens.tolist()))
    assert bounds[0] == 0 and bounds[-1] == seq_len, f"cu_seqlens must span 0..{seq_len}, got {bounds}"
    pieces = []
    for start, end, starts in _doc_chunks(bounds, _SDPA_CHUNK_TOKENS):
        qs, ks, vs = q[:, start:end], k[:, start:end], v[:, start:end]
        if len(starts) == 1:
            pieces.append(_sdpa(qs, ks, vs, None))
        else:
            pieces.append(_sdpa(qs, ks, vs, block_causal_mask(starts, start, end, q.device)))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
