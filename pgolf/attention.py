"""Causal attention over packed documents: one signature, FlashAttention 3 or a reference.

A training or evaluation row is a concatenation of documents, each starting with
BOS. `cu_seqlens` (int32, `[num_docs + 1]`, the cumulative document boundaries)
says where each document starts; a token may attend to earlier tokens of its own
document only.

Shapes follow FlashAttention: q `[B, T, H, D]`, k and v `[B, T, Hkv, D]` with
`H % Hkv == 0` (grouped-query attention: query head h reads KV head
`h // (H // Hkv)`), output `[B, T, H, D]`. With `cu_seqlens`, `B == 1`. The
softmax scale is the default `1/sqrt(D)`.

The active device policy (`pgolf.device`) picks the implementation behind the
single entry point `attention`:

- "sdpa": PyTorch SDPA with a block-diagonal causal mask (`_attention_sdpa`),
  the reference every other path is tested against.
- "fa3" on CUDA: `flash_attn_varlen_func` (`flash_attn_func` without boundaries).
- "fa3" anywhere else: the custom op `pgolf::varlen_attention`, a stand-in for
  FA3 that `torch.compile(fullgraph=True)` traces as one opaque node (its fake
  implementation gives the output's metadata), computed by the reference.

With `check_fa3_contract` the FA3 paths first check FlashAttention 3's input
contract (`check_fa3_contract`) and raise `FA3ContractError` as FA3 would: one
bf16/fp16 dtype for q, k and v, contiguous last dimension, a supported head
dimension, int32 `cu_seqlens` on q's device and an integer `max_seqlen`.
Nothing is cast to make inputs fit: a mixed-dtype call is a bug upstream.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from pgolf import device as _device

_fa3 = _device.FA3

# The SDPA path materializes a [T_chunk, T_chunk] mask and score matrix per call, so
# packed rows are cut into chunks of whole documents of at most this many tokens
# (a single longer document gets a chunk of its own and the mask-free causal kernel).
# On CPU (cpu preset, 4096-token rows) 512 was ~9x faster than one 4096 chunk, and
# ~2x faster than one call per document when documents are short (~40 tokens).
_SDPA_CHUNK_TOKENS = 512


# FA3's traceable stand-in (a custom op), registered by `pgolf.emulation`: only CUDA emulated on CPU
# needs it, so a record run (and its packed file) never loads it.
_FA3_STANDIN = None


def register_fa3_standin(op) -> None:
    global _FA3_STANDIN
    _FA3_STANDIN = op


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
              cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None) -> torch.Tensor:
    """Causal (grouped-query) attention; with `cu_seqlens`, never across a document boundary."""
    policy = _device.active()
    if policy.attention == "fa3":
        if policy.check_fa3_contract:
            check_fa3_contract(q, k, v, cu_seqlens, max_seqlen)
        if _fa3 is not None and q.is_cuda:
            return _attention_fa3(q, k, v, cu_seqlens, max_seqlen)
        if _FA3_STANDIN is None:
            raise RuntimeError("attention 'fa3' off CUDA runs FA3's stand-in op: import pgolf.emulation first")
        return _FA3_STANDIN(q, k, v, cu_seqlens, max_seqlen, policy.check_fa3_contract)
    assert q.ndim == 4 and k.shape == v.shape and k.shape[:2] == q.shape[:2], (q.shape, k.shape, v.shape)
    assert q.shape[-1] == k.shape[-1] and q.shape[2] % k.shape[2] == 0, (q.shape, k.shape)
    if cu_seqlens is not None:
        assert q.shape[0] == 1, "packed attention (cu_seqlens) takes one row, B == 1"
    return _attention_sdpa(q, k, v, cu_seqlens)


# --------------------------------------------------------------------------- FlashAttention 3's contract
class FA3ContractError(RuntimeError):
    """Inputs FlashAttention 3 would reject (or, for `max_seqlen`, silently get wrong)."""


FA3_DTYPES = (torch.bfloat16, torch.float16)  # FA3 also takes fp8_e4m3, which nothing here produces
FA3_MAX_HEAD_DIM = 256
FA3_HEAD_DIM_MULTIPLE = 8


def _fail(message: str) -> None:
    raise FA3ContractError("FA3 contract: " + message)


def check_fa3_contract(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor | None,
                       max_seqlen) -> None:
    """Raise `FA3ContractError` unless FA3 would accept these inputs (metadata only: no sync, traceable)."""
    if q.dtype not in FA3_DTYPES:
        _fail(f"q is {q.dtype}, not bf16 or fp16")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        _fail(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        _fail(f"q, k, v devices differ: {q.device}, {k.device}, {v.device}")
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        _fail(f"q, k, v must be 4-D, got {q.ndim}, {k.ndim}, {v.ndim}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            _fail(f"{name} has a non-contiguous last dim")
    head_dim = q.shape[-1]
    if head_dim > FA3_MAX_HEAD_DIM or head_dim % FA3_HEAD_DIM_MULTIPLE != 0:
        _fail(f"head_dim {head_dim} is over {FA3_MAX_HEAD_DIM} or not a multiple of {FA3_HEAD_DIM_MULTIPLE}")
    if k.shape != v.shape or k.shape[:2] != q.shape[:2] or k.shape[-1] != head_dim:
        _fail(f"k, v shapes {tuple(k.shape)}, {tuple(v.shape)} do not fit q {tuple(q.shape)}")
    if q.shape[2] % k.shape[2] != 0:
        _fail(f"{k.shape[2]} KV heads do not divide {q.shape[2]} query heads")
    if cu_seqlens is None:
        return
    if cu_seqlens.dtype != torch.int32:
        _fail(f"cu_seqlens is {cu_seqlens.dtype}, not int32")
    if cu_seqlens.device != q.device:
        _fail(f"cu_seqlens is on {cu_seqlens.device}, q on {q.device}")
    if cu_seqlens.ndim != 1 or cu_seqlens.shape[0] < 2 or cu_seqlens.stride(0) != 1:
        _fail(f"cu_seqlens must be contiguous 1-D with 2+ entries, got {tuple(cu_seqlens.shape)}")
    if q.shape[0] != 1:
        _fail(f"cu_seqlens needs batch 1, got {q.shape[0]}")
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int) or max_seqlen < 1:
        _fail(f"max_seqlen must be a positive int, got {max_seqlen!r}")


# --------------------------------------------------------------------------- FlashAttention 3
def _attention_fa3(q, k, v, cu_seqlens, max_seqlen):
    if cu_seqlens is None:
        y = _fa3.flash_attn_func(q, k, v, causal=True)
    else:
        if max_seqlen is None:  # only without the contract check, which requires it
            max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item())
        y = _fa3.flash_attn_varlen_func(q[0], k[0], v[0], cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens,
                                        max_seqlen_q=max_seqlen, max_seqlen_k=max_seqlen, causal=True)
        y = (y[0] if isinstance(y, tuple) else y)[None]
    if isinstance(y, tuple):  # some FA3 builds also return the log-sum-exp
        y = y[0]
    return y


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


@functools.lru_cache(maxsize=64)
def _shared_mask(doc_starts: tuple[int, ...], start: int, end: int, device: torch.device) -> torch.Tensor:
    # Every attention layer of a forward (and every loop pass) sees the same boundaries: one mask serves them all.
    return block_causal_mask(list(doc_starts), start, end, device)


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
            mask = (block_causal_mask(starts, start, end, q.device) if torch.compiler.is_compiling()
                    else _shared_mask(tuple(starts), start, end, q.device))
            pieces.append(_sdpa(qs, ks, vs, mask))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
