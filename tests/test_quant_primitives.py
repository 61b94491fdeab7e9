"""GPTQ / SDClip / AWQ-lite and LQER, each on small random matrices."""

from __future__ import annotations

import pytest
import torch

from pgolf.quant.gptq import (FP16_TINY, awq_group_scores, awq_select_groups, choose_qparams, dequantize,
                              fp16_scale, gptq_quantize, group_mask, hessian_error, qrange, quantize)
from pgolf.quant.lqer import lqer_dequantize, lqer_dequantize_factors, lqer_fit, lqer_pack_asym, lqer_select


def correlated_hessian(cols: int, rows: int = 4096, seed: int = 0) -> torch.Tensor:
    """XᵀX of activations with correlated columns of uneven scale (where GPTQ beats rounding)."""
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(rows, cols, generator=g)
    mix = torch.eye(cols) + 0.6 * torch.randn(cols, cols, generator=g) / cols ** 0.5
    X = (Z @ mix) * torch.linspace(0.3, 2.0, cols)
    return X.T @ X / rows


def rtn(W: torch.Tensor, bits: int, clip: float) -> torch.Tensor:
    s = choose_qparams(W, bits, clip)
    return dequantize(quantize(W, s, bits), s)


# --------------------------------------------------------------------------- SDClip / RTN
def test_sdclip_scale_formula():
    W = torch.randn(16, 96) * torch.linspace(0.01, 1.0, 16).view(-1, 1)
    for bits, R in ((6, 31), (7, 63), (8, 127)):
        s = choose_qparams(W, bits, 13.0)
        assert qrange(bits) == R
        assert s.dtype == torch.float16 and s.shape == (16,)
        expected = (13.0 * W.std(dim=1) / R).to(torch.float16)
        assert torch.equal(s, expected)


def test_sdclip_constant_row_gets_a_positive_scale_and_zero_symbols():
    W = torch.randn(4, 32)
    W[1] = 0.0
    s = choose_qparams(W, 6, 13.0)
    assert float(s[1]) == FP16_TINY and bool((s > 0).all())
    q = quantize(W, s, 6)
    assert bool((q[1] == 0).all())
    assert torch.equal(fp16_scale(torch.tensor([0.5])), torch.tensor([0.5], dtype=torch.float16))


def test_quantize_clamps_and_rounds_to_nearest():
    s = torch.tensor([0.5], dtype=torch.float16)
    W = torch.tensor([[0.0, 0.24, 0.26, -0.76, 100.0, -100.0]])
    q = quantize(W, s, 6)
    assert q.tolist() == [[0, 0, 1, -2, 31, -31]]
    assert dequantize(q, s).tolist() == [[0.0, 0.0, 0.5, -1.0, 15.5, -15.5]]


# --------------------------------------------------------------------------- GPTQ
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gptq_beats_round_to_nearest_in_hessian_error(seed):
    torch.manual_seed(seed)
    H = correlated_hessian(64, seed=seed)
    W = torch.randn(32, 64)
    for bits, clip in ((6, 13.0), (4, 6.0)):
        res = gptq_quantize(W, H, bits, clip, block_size=16)
        assert res.q.dtype == torch.int8 and res.scale_hi is None
        assert int(res.q.abs().max()) <= qrange(bits)
        err_gptq = hessian_error(W, dequantize(res.q, res.scale), H)
        err_rtn = hessian_error(W, rtn(W, bits, clip), H)
        assert err_gptq < 0.9 * err_rtn, (bits, err_gptq, err_rtn)
        # the same per-row grid as round-to-nearest: only the rounding choices differ
        assert torch.equal(res.scale, choose_qparams(W, bits, clip))


def test_gptq_with_identity_hessian_is_round_to_nearest():
    W = torch.randn(8, 40)
    res = gptq_quantize(W, torch.eye(40), 6, 13.0, block_size=8)
    assert torch.equal(res.q, quantize(W, choose_qparams(W, 6, 13.0), 6))


def test_gptq_block_size_does_not_change_the_result():
    # the lazy block update is an exact reordering of the same arithmetic
    H = correlated_hessian(48, seed=3)
    W = torch.randn(16, 48)
    a = gptq_quantize(W, H, 6, 13.0, block_size=48).q
    b = gptq_quantize(W, H, 6, 13.0, block_size=7).q
    assert (a != b).float().mean() < 0.01


def test_gptq_returns_original_column_order():
    # permuting the input columns (and H with them) permutes the symbols the same way
    H = correlated_hessian(32, seed=4)
    W = torch.randn(8, 32)
    perm = torch.randperm(32)
    a = gptq_quantize(W, H, 6, 13.0, block_size=8).q
    b = gptq_quantize(W[:, perm], H[perm][:, perm], 6, 13.0, block_size=8).q
    assert (a[:, perm] != b).float().mean() < 0.01


def test_gptq_dead_columns_become_zero():
    H = correlated_hessian(32, seed=5)
    dead = [3, 17]
    H[dead, :] = 0.0
    H[:, dead] = 0.0
    W = torch.randn(12, 32)
    res = gptq_quantize(W, H, 6, 13.0, block_size=8)
    assert bool((res.q[:, dead] == 0).all())
    W_hat = dequantize(res.q, res.scale)
    assert bool(torch.isfinite(W_hat).all())
    live = [j for j in range(32) if j not in dead]
    Hl = H[live][:, live]
    assert hessian_error(W[:, live], W_hat[:, live], Hl) <= hessian_error(W[:, live], rtn(W, 6, 13.0)[:, live], Hl)


def test_gptq_all_dead_hessian_quantizes_to_zero():
    res = gptq_quantize(torch.randn(4, 16), torch.zeros(16, 16), 6, 13.0)
    assert bool((res.q == 0).all())


def test_awq_protected_columns_get_finer_error():
    torch.manual_seed(6)
    H = correlated_hessian(64, seed=6)
    W = torch.randn(32, 64)
    mask = group_mask([16], 16, 64)
    plain = gptq_quantize(W, H, 6, 13.0, block_size=16)
    prot = gptq_quantize(W, H, 6, 13.0, block_size=16, protected_cols=mask, protected_bits=8)
    assert prot.scale_hi is not None and prot.scale_hi.dtype == torch.float16
    assert torch.equal(prot.scale_hi, choose_qparams(W, 8, 13.0))
    # the protected group sits on a 127/31 times finer grid: its symbols are that much larger
    ratio = prot.q[:, mask].float().abs().mean() / plain.q[:, mask].float().abs().mean()
    assert 3.0 < float(ratio) < 5.5
    assert int(prot.q[:, ~mask].abs().max()) <= qrange(6)
    # GPTQ moves weights to compensate, so compare what the layer computes: the output error drops
    W_plain = dequantize(plain.q, plain.scale)
    W_prot = dequantize(prot.q, prot.scale, prot.scale_hi, mask)
    assert hessian_error(W, W_prot, H) < hessian_error(W, W_plain, H)
    # without error propagation (H = I) the protected columns' rounding error is ~4x smaller, the rest unchanged
    eye_plain = gptq_quantize(W, torch.eye(64), 6, 13.0, block_size=16)
    eye_prot = gptq_quantize(W, torch.eye(64), 6, 13.0, block_size=16, protected_cols=mask)
    assert torch.equal(eye_plain.q[:, ~mask], eye_prot.q[:, ~mask])
    err_plain = (W - dequantize(eye_plain.q, eye_plain.scale))[:, mask].abs().mean()
    err_prot = (W - dequantize(eye_prot.q, eye_prot.scale, eye_prot.scale_hi, mask))[:, mask].abs().mean()
    assert err_prot < 0.35 * err_plain
    # index-list and mask forms agree; protection is ignored when it is not finer
    idx = gptq_quantize(W, H, 6, 13.0, block_size=16, protected_cols=torch.arange(16, 32), protected_bits=8)
    assert torch.equal(idx.q, prot.q)
    same = gptq_quantize(W, H, 8, 13.0, block_size=16, protected_cols=mask, protected_bits=8)
    assert same.scale_hi is None


def test_awq_selection_is_global_and_uses_saliency():
    W1 = torch.ones(4, 64)
    W2 = torch.ones(8, 128)
    rms1 = torch.ones(64)
    rms2 = torch.ones(128)
    rms2[64:80] = 10.0  # group 2 of the second tensor (size 32) is the most salient overall
    scores = awq_group_scores(W2, rms2, 32)
    assert scores.shape == (4,) and torch.allclose(scores, torch.tensor([32.0, 32.0, 16 * 10 + 16, 32.0]))
    chosen = awq_select_groups({"a": (W1, rms1), "b": (W2, rms2)}, 32, 1)
    assert chosen == {"b": [64]}
    two = awq_select_groups({"a": (W1 * 10, rms1), "b": (W2, rms2)}, 32, 2)
    assert two == {"a": [0, 32]}  # raw scores: the heavier matrix wins both slots
    assert awq_select_groups({"a": (W1, rms1)}, 32, 0) == {}
    assert awq_group_scores(torch.ones(2, 70), torch.ones(70), 32).shape == (2,)  # ragged tail ignored


@pytest.mark.gpu
def test_gptq_on_cuda_matches_cpu():
    H = correlated_hessian(64, seed=7)
    W = torch.randn(32, 64)
    cpu = gptq_quantize(W, H, 6, 13.0, block_size=16)
    gpu = gptq_quantize(W.cuda(), H.cuda(), 6, 13.0, block_size=16)
    assert gpu.q.is_cuda
    assert (gpu.q.cpu() != cpu.q).float().mean() < 0.01


# --------------------------------------------------------------------------- LQER
def test_lqer_fit_recovers_a_low_rank_matrix():
    E = torch.randn(20, 3) @ torch.randn(3, 30)
    A, B = lqer_fit(E, 4)
    assert A.shape == (20, 4) and B.shape == (4, 30)
    assert torch.allclose(A @ B, E, atol=1e-4)
    assert torch.allclose(B @ B.T, torch.eye(4), atol=1e-4)  # B = V_rᵀ has orthonormal rows


def test_lqer_asym_packing_ranges_and_scales():
    A = torch.randn(32, 4)
    B = torch.randn(4, 48)
    f = lqer_pack_asym(A, B, group=64)
    assert f.qA.dtype == torch.int8 and int(f.qA.min()) >= -2 and int(f.qA.max()) <= 1
    assert f.qB.dtype == torch.int8 and int(f.qB.min()) >= -8 and int(f.qB.max()) <= 7
    assert f.sA.shape == () and f.sA.dtype == torch.float16
    assert torch.equal(f.sA, (A.abs().max() / 1.5).to(torch.float16))
    assert f.sB.shape == (3,)
    assert torch.equal(f.sB, (B.reshape(3, 64).abs().amax(dim=1) / 7.5).to(torch.float16))
    # every B value is within half a step of its reconstruction (plus the fp16 rounding of the scale)
    _, B_hat = lqer_dequantize_factors(f)
    step = f.sB.float().repeat_interleave(64).view(4, 48)
    assert bool(((B - B_hat).abs() <= 0.505 * step).all())


def test_lqer_ragged_last_group():
    B = torch.randn(2, 37)  # 74 values: groups of 16, the last one 10 long
    f = lqer_pack_asym(torch.randn(5, 2), B, group=16)
    assert f.sB.numel() == 5
    assert torch.equal(f.sB[-1], (B.reshape(-1)[64:].abs().max() / 7.5).to(torch.float16))
    assert lqer_dequantize(f).shape == (5, 37)


def test_lqer_reduces_the_gptq_residual():
    torch.manual_seed(8)
    H = correlated_hessian(64, seed=8)
    # a weight with a few strong directions: the residual inherits them
    W = torch.randn(48, 64) * 0.05 + torch.randn(48, 2) @ torch.randn(2, 64)
    res = gptq_quantize(W, H, 4, 8.0, block_size=16)
    W_hat = dequantize(res.q, res.scale)
    E = W - W_hat
    A, B = lqer_fit(E, 4)
    corr = lqer_dequantize(lqer_pack_asym(A, B, group=16))
    assert (W - W_hat - corr).norm() < E.norm()


def test_lqer_select_top_k_skips_zero_errors():
    errs = {"a": 1.0, "b": 5.0, "c": 0.0, "d": 3.0}
    assert lqer_select(errs, 3) == ["b", "d", "a"]
    assert lqer_select(errs, 10) == ["b", "d", "a"]
    assert lqer_select({"z": 0.0}, 3) == []
