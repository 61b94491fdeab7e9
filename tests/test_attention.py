"""pgolf.attention: the SDPA path against a naive softmax, document isolation, FA3's contract and its
stand-in custom op, FA3 parity on a GPU."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from pgolf import attention as attn_mod
from pgolf import device, emulation
from pgolf.attention import FA3ContractError, attention, block_causal_mask
from pgolf.emulation import varlen_attention


def _override_impl(name: str):
    """Force `"fa3"` or `"sdpa"`: activates a copy of the active policy with that attention (ConfigError, a
    ValueError, for any other name). `with _override_impl("sdpa"): ...` restores the previous policy afterwards."""
    return dataclasses.replace(device.active(), attention=name).activate()


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


def test_impl_is_sdpa_on_plain_cpu():
    assert device.cpu_policy().attention == "sdpa"
    if not torch.cuda.is_available() and not device.active().emulated:
        assert device.policy_for("cpu").attention == "sdpa"


def test_override_impl_restores_previous():
    def impl():
        return device.active().attention  # what `attention` dispatches on

    before = impl()
    with _override_impl("sdpa"):
        assert impl() == "sdpa"
        with _override_impl("fa3"):
            assert impl() == "fa3"
        assert impl() == "sdpa"
    assert impl() == before
    with pytest.raises(ValueError):
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


# --------------------------------------------------------------------------- FA3's contract and its stand-in
@pytest.fixture
def emulated():
    """The CUDA policy on CPU: attention goes through the FA3 stand-in op and checks the contract."""
    with emulation.emulated_cuda_policy().activate() as policy:
        yield policy


def _valid(dtype=torch.bfloat16, seq_len=20, head_dim=16):
    q, k, v = _qkv(1, seq_len, head_dim=head_dim, dtype=dtype)
    return q, k, v, torch.tensor([0, 5, 6, 14, seq_len, seq_len], dtype=torch.int32), 8


def _violations():
    """(name, message, q, k, v, cu_seqlens, max_seqlen): each breaks exactly one precondition of FA3."""
    q, k, v, cu, max_len = _valid()
    strided = _qkv(1, 20, head_dim=16, dtype=torch.bfloat16)[0].transpose(-1, -2).contiguous().transpose(-1, -2)
    yield "fp32 q, k, v", "not bf16 or fp16", q.float(), k.float(), v.float(), cu, max_len
    yield "k fp32 beside bf16 q, v", "dtypes differ", q, k.float(), v, cu, max_len
    yield "v fp16 beside bf16 q, k", "dtypes differ", q, k, v.half(), cu, max_len
    yield "last dim not contiguous", "non-contiguous last", strided, k, v, cu, max_len
    yield "head dim not a multiple of 8", "head_dim 12", *_valid(head_dim=12)[:3], cu, max_len
    yield "head dim over 256", "head_dim 264", *_valid(head_dim=264)[:3], cu, max_len
    yield "KV heads do not divide query heads", "do not divide", q, k[:, :, :1].expand(-1, -1, 3, -1).contiguous(), \
        v[:, :, :1].expand(-1, -1, 3, -1).contiguous(), cu, max_len
    yield "k and v shapes differ", "do not fit q", q, k, v[:, :, :1].contiguous(), cu, max_len
    yield "cu_seqlens int64", "not int32", q, k, v, cu.long(), max_len
    yield "cu_seqlens on another device", "on meta", q, k, v, cu.to("meta"), max_len
    yield "packed batch of 2", "batch 1", *(t.expand(2, -1, -1, -1) for t in (q, k, v)), cu, max_len
    yield "max_seqlen missing", "max_seqlen", q, k, v, cu, None
    yield "max_seqlen a float", "max_seqlen", q, k, v, cu, 8.0
    yield "max_seqlen a tensor", "max_seqlen", q, k, v, cu, torch.tensor(8)
    yield "max_seqlen shorter than a document", "< longest document", q, k, v, cu, 7
    yield "cu_seqlens short of T", "rise from 0", q, k, v, torch.tensor([0, 5, 14], dtype=torch.int32), max_len


@pytest.mark.parametrize("case", list(_violations()), ids=lambda c: c[0])
def test_contract_violations_raise(emulated, case):
    _, message, q, k, v, cu, max_len = case
    with pytest.raises(FA3ContractError, match=message):
        attention(q, k, v, cu_seqlens=cu, max_seqlen=max_len)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_valid_input_passes_and_matches_the_reference(emulated, dtype):
    q, k, v, cu, max_len = _valid(dtype)
    out = attention(q, k, v, cu_seqlens=cu, max_seqlen=max_len)
    dense = attention(q, k, v)
    assert out.dtype == dtype and out.is_contiguous()
    with _override_impl("sdpa"):
        assert torch.equal(out, attention(q, k, v, cu_seqlens=cu))
        assert torch.equal(dense, attention(q, k, v))


def test_fp32_is_not_cast_away_under_the_contract(emulated):
    """The old FA3 path cast fp32 inputs to bf16; under the contract they are an upstream bug."""
    q, k, v, cu, max_len = _valid(torch.float32)
    with pytest.raises(FA3ContractError, match="not bf16 or fp16"):
        attention(q, k, v, cu_seqlens=cu, max_seqlen=max_len)


def test_the_op_checks_on_every_call_only_when_asked():
    q, k, v, cu, max_len = _valid()
    with pytest.raises(FA3ContractError, match="dtypes differ"):
        varlen_attention(q, k.float(), v, cu, max_len, True)
    with pytest.raises(FA3ContractError, match="longest document"):
        varlen_attention(q, k, v, cu, 3, True)
    # Unchecked, the op is the reference (which itself computes in one dtype).
    out = varlen_attention(q.float(), k.float(), v.float(), cu, max_len, False)
    with _override_impl("sdpa"):
        assert torch.equal(out, attention(q.float(), k.float(), v.float(), cu_seqlens=cu))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 4e-2)])
@pytest.mark.parametrize("packed", [True, False])
def test_op_gradients_match_the_reference(dtype, tol, packed):
    q, k, v = (t.requires_grad_() for t in _qkv(1, 24, num_heads=4, num_kv_heads=2, head_dim=16, dtype=dtype))
    cu = torch.tensor([0, 3, 11, 24, 24], dtype=torch.int32) if packed else None
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
    out = varlen_attention(q, k, v, cu, 13 if packed else None, dtype != torch.float32)
    got = torch.autograd.grad(out, (q, k, v), grad)
    with _override_impl("sdpa"):
        ref = attention(q, k, v, cu_seqlens=cu)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    assert torch.equal(out, ref)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        torch.testing.assert_close(g.float(), w.float(), atol=tol, rtol=tol)
    # Documents stay isolated in the backward too: the last document's keys get nothing from the first's queries.
    if packed:
        (dk,) = torch.autograd.grad(varlen_attention(q, k, v, cu, 13, False)[:, :3].sum(), (k,))
        assert torch.count_nonzero(dk[:, 3:]) == 0


def test_fake_implementation_gives_the_real_metadata():
    from torch._subclasses.fake_tensor import FakeTensorMode

    q, k, v, cu, max_len = _valid()
    real = varlen_attention(q, k, v, cu, max_len, True)
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake = varlen_attention(q, k, v, cu, max_len, True)
        with pytest.raises(FA3ContractError):
            varlen_attention(q, k.float(), v, cu, max_len, True)
    assert (fake.shape, fake.dtype, fake.stride()) == (real.shape, real.dtype, real.stride())
