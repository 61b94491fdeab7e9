"""LQER: a quantized low-rank correction of the quantization error.

After GPTQ the residual E = W - Ŵ of a few tensors still has a handful of
large singular directions. Storing a rank-r factorization E ≈ A·B (A = U_r S_r
[rows, r], B = V_rᵀ [r, cols], from the SVD) costs r·(rows + cols) numbers,
and those numbers survive very coarse quantization ("asymmetric" packing, as
#1797): A as INT2 in [-2, 1] with a single fp16 scale max|A|/1.5, B as INT4
in [-8, 7] in groups of 64 over the flattened B with an fp16 scale
max|g|/7.5 per group. The grids are offset by half a step (scale = max/(2^(b-1)
- 0.5)) so that the most negative code is used. Only the top-k tensors by
‖E‖_F (3 in the record) get a correction; the dequantized weight is Ŵ + Â·B̂.

    lqer_fit(E, rank) -> (A, B)
    lqer_pack_asym(A, B, group, a_bits, b_bits) -> LqerFactors
    lqer_dequantize(factors) -> Â·B̂ (fp32 [rows, cols])
    lqer_select(errors, top_k) -> names
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from pgolf.quant.gptq import fp16_scale


class LqerFactors(NamedTuple):
    qA: torch.Tensor
    """int8 [rows, r], values in [-2^(a_bits-1), 2^(a_bits-1)-1]."""
    sA: torch.Tensor
    """fp16 scalar scale of A."""
    qB: torch.Tensor
    """int8 [r, cols], values in [-2^(b_bits-1), 2^(b_bits-1)-1]."""
    sB: torch.Tensor
    """fp16 [ceil(r·cols / group)] per-group scales of the flattened B."""
    group: int
    """Values of the flattened B per scale (the last group may be shorter)."""


def lqer_fit(E: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-r approximation of E as A = U_r S_r [rows, r] and B = V_rᵀ [r, cols] (fp32)."""
    assert E.ndim == 2 and rank > 0, (E.shape, rank)
    U, S, Vh = torch.linalg.svd(E.float(), full_matrices=False)
    r = min(rank, S.numel())
    return (U[:, :r] * S[:r]).contiguous(), Vh[:r, :].contiguous()


def _half_step_scale(max_abs: torch.Tensor, bits: int) -> torch.Tensor:
    return fp16_scale(max_abs.float() / ((1 << (bits - 1)) - 0.5))


def lqer_pack_asym(A: torch.Tensor, B: torch.Tensor, group: int = 64, a_bits: int = 2,
                   b_bits: int = 4) -> LqerFactors:
    """Quantize the factors: A per-matrix at a_bits, B per `group` flattened values at b_bits.

    A flattened B whose length is not a multiple of `group` gets a shorter last group.
    """
    a_lo, a_hi = -(1 << (a_bits - 1)), (1 << (a_bits - 1)) - 1
    b_lo, b_hi = -(1 << (b_bits - 1)), (1 << (b_bits - 1)) - 1
    sA = _half_step_scale(A.abs().amax(), a_bits)
    qA = torch.clamp(torch.round(A.float() / sA.float()), a_lo, a_hi).to(torch.int8)

    flat = B.float().reshape(-1)
    num_groups = (flat.numel() + group - 1) // group
    padded = torch.zeros(num_groups * group, device=flat.device)
    padded[: flat.numel()] = flat
    groups = padded.view(num_groups, group)
    sB = _half_step_scale(groups.abs().amax(dim=1), b_bits)
    qB = torch.clamp(torch.round(groups / sB.float().view(-1, 1)), b_lo, b_hi)
    qB = qB.reshape(-1)[: flat.numel()].reshape(B.shape).to(torch.int8)
    return LqerFactors(qA, sA, qB, sB, group)


def lqer_dequantize_factors(f: LqerFactors) -> tuple[torch.Tensor, torch.Tensor]:
    """(Â [rows, r], B̂ [r, cols]) in fp32."""
    A_hat = f.qA.float() * f.sA.float()
    flat = f.qB.float().reshape(-1)
    assert f.sB.numel() == -(-flat.numel() // f.group), (f.sB.shape, flat.shape, f.group)
    idx = torch.arange(flat.numel(), device=flat.device) // f.group
    B_hat = (flat * f.sB.float().to(flat.device)[idx]).reshape(f.qB.shape)
    return A_hat, B_hat


def lqer_dequantize(f: LqerFactors) -> torch.Tensor:
    """The correction Â·B̂ (fp32 [rows, cols]) to add to the GPTQ reconstruction."""
    A_hat, B_hat = lqer_dequantize_factors(f)
    return A_hat @ B_hat


def lqer_select(error_norms: dict[str, float], top_k: int) -> list[str]:
    """Names of the top-k tensors by ‖E‖_F, largest first; zero residuals are never chosen."""
    ranked = sorted((n for n, v in error_norms.items() if v > 0), key=lambda n: -error_norms[n])
    return ranked[: max(top_k, 0)]
