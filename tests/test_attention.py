"""pgolf.attention: the SDPA path against a naive softmax, document isolation, FA3 parity on a GPU."""

from __future__ import annotations

import math

import pytest
import torch

from pgolf import attention as attn_mod
from pgolf.attention import _override_impl, attention, block_causal_mask


def naive_attention(q, k, v, cu_seqlens=None):
    """Explicit loops over heads: softmax(q k^T / sqrt(D) + mask) v with the mask written out by hand."""
    bsz, seq_len, num_heads, head_dim = q.shape
    group = num_heads // k.shape[2]
    doc = torch.zeros(seq_len, dtype=torch.long)
    if cu_seqlens is not None:
        for start in cu_seqlens.tolist()[1:-1]:
            doc[start:] += 1 if start < seq_len else 0
    allowed = torch.zeros(seq_len, seq_len, dtype=torch.bool)
    for t in range(seq_len):
        for s in range(t + 1):
            allowed[t, s] = bool(doc[t] == doc[s])
    out = torch.empty_like(q)
    for b in range(bsz):
        for h in range(num_heads):
            scores = q[b, :, h] @ k[b, :, h // group].T / math.sqrt(head_dim)
            scores = scores.masked_fill(~allowed, float("-inf"))
            out[b, :, h] = torch.softmax(scores, dim=-1) @ v[b, :, h // group]
    return out


def _qkv(bsz, seq_len, num_heads=4, num_kv_heads=2, head_dim=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(bsz, seq_len, num_heads, head_dim, generator=g, dtype=dtype)
    k = torch.randn(bsz, seq_len, num_kv_heads, head_dim, generator=g, dtype=dtype)
    v = torch.randn(bsz, seq_len, num_kv_heads, head_dim, generator=g, dtype=dtype)
    return q, k, v


@pytest.fixture(autouse=True)
def _sdpa():
    with _override_impl("sdpa"):
        yield


def test_impl_is_sdpa_without_cuda():
    if not torch.cuda.is_available():
        assert attn_mod._choose_impl() == "sdpa"


def test_override_impl_restores_previous():
    before = attn_mod.IMPL
    with _override_impl("sdpa"):
        assert attn_mod.IMPL == "sdpa"
    assert attn_mod.IMPL == before
    with pytest.raises(AssertionError):
        _override_impl("xformers")


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
def test_dense_matches_naive(num_kv_heads):
    q, k, v = _qkv(2, 13, num_kv_heads=num_kv_heads)
    torch.testing.assert_close(attention(q, k, v), naive_attention(q, k, v), atol=1e-5, rtol=1e-5)


def test_packed_matches_naive_and_padding_is_ignored():
    q, k, v = _qkv(1, 20)
    cu = torch.tensor([0, 5, 6, 14, 20], dtype=torch.int32)
    expected = naive_attention(q, k, v, cu)
    torch.testing.assert_close(attention(q, k, v, cu_seqlens=cu, max_seqlen=8), expected, atol=1e-5, rtol=1e-5)
    padded = torch.tensor([0, 5, 6, 14, 20, 20, 20], dtype=torch.int32)
    torch.testing.assert_close(attention(q, k, v, cu_seqlens=padded, max_seqlen=8), expected, atol=1e-5, rtol=1e-5)
    # One document spanning the row is plain causal attention.
    whole = torch.tensor([0, 20], dtype=torch.int32)
    torch.testing.assert_close(attention(q, k, v, cu_seqlens=whole), attention(q, k, v), atol=1e-6, rtol=1e-6)


def test_chunked_sdpa_equals_single_chunk(monkeypatch):
    q, k, v = _qkv(1, 40)
    cu = torch.tensor([0, 7, 9, 25, 26, 40], dtype=torch.int32)
    full = attention(q, k, v, cu_seqlens=cu)
    monkeypatch.setattr(attn_mod, "_SDPA_CHUNK_TOKENS", 10)  # forces 4 chunks, one longer than the cap
    torch.testing.assert_close(attention(q, k, v, cu_seqlens=cu), full, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(full, naive_attention(q, k, v, cu), atol=1e-5, rtol=1e-5)


def test_doc_chunks_keep_documents_whole():
    chunks = attn_mod._doc_chunks([0, 7, 9, 25, 26, 40], 10)
    assert chunks == [(0, 9, [0, 7]), (9, 25, [9]), (25, 26, [25]), (26, 40, [26])]


def test_no_attention_across_segment_boundaries():
    q, k, v = _qkv(1, 16)
    cu = torch.tensor([0, 6, 11, 16], dtype=torch.int32)
    base = attention(q, k, v, cu_seqlens=cu)
    k2, v2 = k.clone(), v.clone()
    k2[:, 6:11] += 3.0  # only the middle document's keys and values change
    v2[:, 6:11] -= 2.0
    out = attention(q, k2, v2, cu_seqlens=cu)
    assert torch.equal(out[:, :6], base[:, :6])
    assert torch.equal(out[:, 11:], base[:, 11:])
    assert not torch.allclose(out[:, 6:11], base[:, 6:11])


def test_causal_future_does_not_leak():
    q, k, v = _qkv(2, 12)
    base = attention(q, k, v)
    k2, v2 = k.clone(), v.clone()
    k2[:, 7:] = torch.randn_like(k2[:, 7:])
    v2[:, 7:] = torch.randn_like(v2[:, 7:])
    out = attention(q, k2, v2)
    assert torch.equal(out[:, :7], base[:, :7])
    assert not torch.allclose(out[:, 7:], base[:, 7:])


def test_block_causal_mask_literal():
    mask = block_causal_mask([0, 2], 0, 4, "cpu").int().tolist()
    assert mask == [[1, 0, 0, 0],
                    [1, 1, 0, 0],
                    [0, 0, 1, 0],
                    [0, 0, 1, 1]]


def test_gradients_flow_through_packed_path():
    q, k, v = (t.requires_grad_() for t in _qkv(1, 10))
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    attention(q, k, v, cu_seqlens=cu).square().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))
    # Keys of document 2 get no gradient from document 1's queries and vice versa: zero only if isolated.
    q.grad = k.grad = v.grad = None
    attention(q, k, v, cu_seqlens=cu)[:, :4].sum().backward()
    assert torch.count_nonzero(k.grad[:, 4:]) == 0 and torch.count_nonzero(v.grad[:, 4:]) == 0


@pytest.mark.gpu
def test_fa3_matches_sdpa_on_gpu():
    pytest.importorskip("flash_attn_interface", reason="FlashAttention 3 is not installed on this GPU machine")
    q, k, v = (t.cuda() for t in _qkv(1, 512, num_heads=8, num_kv_heads=4, head_dim=64, dtype=torch.bfloat16))
    cu = torch.tensor([0, 100, 101, 400, 512, 512], dtype=torch.int32, device="cuda")
    with _override_impl("sdpa"):
        ref_packed = attention(q, k, v, cu_seqlens=cu, max_seqlen=299)
        ref_dense = attention(q, k, v)
    with _override_impl("fa3"):
        fa_packed = attention(q, k, v, cu_seqlens=cu, max_seqlen=299)
        fa_dense = attention(q, k, v)
    torch.testing.assert_close(fa_packed.float(), ref_packed.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(fa_dense.float(), ref_dense.float(), atol=2e-2, rtol=2e-2)
