"""GPTQ with SDClip scales, act-order and AWQ-lite protected column groups.

Round-to-nearest quantizes every weight on its own; GPTQ quantizes the
columns of W one at a time and pushes each column's rounding error onto the
columns not yet quantized, weighted by the inverse input Hessian H = E[xxᵀ]
(from calibration), so that the layer's *output* error tr(ΔW H ΔWᵀ) is small
rather than the weight error. Columns go in act-order (largest H_jj first) in
blocks of 128 with the standard lazy batch update. The damping, ordering and
Cholesky factorization of H run in float32 as in the record: a float64
factorization is more accurate, but it flips a few symbols near rounding
boundaries (and, through the error, the LQER factors), so it is an option.

Scales are SDClip: one fp16 scale per output row, s = clip_sigmas·std(W_row)/R
with R = 2^(bits-1) - 1 (31 for int6, 63 for int7), no search; symbols are
clamp(round(w/s), -R, R) stored as int8.

AWQ-lite (#1908/#2014): the globally most salient 64-column input group(s),
saliency_j = act_rms_j · mean_i |W_ij|, are quantized inside the same GPTQ
loop with a finer per-row scale s_hi = clip_sigmas·std(W_row)/127 in
[-127, 127]; their rounding error is propagated with the matching
reconstruction, so the rest of the matrix compensates for what is left.

    choose_qparams -> quantize -> dequantize        round-to-nearest primitives
    gptq_quantize(W, H, bits, clip_sigmas, ...)     the Hessian-aware version
    awq_select_groups(candidates, group, top_k)     which groups get 8 bits
"""

from __future__ import annotations

from typing import NamedTuple

import torch

MIN_SCALE = 1e-10
FP16_TINY = 2.0 ** -24  # smallest positive fp16 (subnormal)


def fp16_scale(scale: torch.Tensor) -> torch.Tensor:
    """An fp32 scale clamped at 1e-10 and stored as fp16, never 0.

    The record clamps at 1e-10 before the fp16 cast, which rounds to 0 for a
    constant row (e.g. a zero-initialised projection) and then divides 0/0;
    flooring the fp16 value at its smallest subnormal keeps such rows at q = 0
    and changes nothing for any row with a usable spread.
    """
    s16 = scale.float().clamp_min(MIN_SCALE).to(torch.float16)
    return torch.where(s16 == 0, torch.full_like(s16, FP16_TINY), s16)


def qrange(bits: int) -> int:
    """Largest symbol magnitude R of a symmetric `bits`-wide grid (31 for int6, 63 for int7, 127 for int8)."""
    assert 2 <= bits <= 8, bits
    return (1 << (bits - 1)) - 1


def choose_qparams(W: torch.Tensor, bits: int, clip_sigmas: float) -> torch.Tensor:
    """SDClip per-row scale: fp16 [rows], clip_sigmas·std(W_row)/R, at least 1e-10 (see `fp16_scale`).

    std is the unbiased sample std of each row, as the record computes it.
    """
    assert W.ndim == 2, W.shape
    row_std = W.float().std(dim=1)
    return fp16_scale(clip_sigmas * row_std / qrange(bits))


def quantize(W: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Round-to-nearest int8 symbols of W [rows, cols] on the per-row grid `scale` [rows]."""
    R = qrange(bits)
    s = scale.float().view(-1, 1)
    return torch.clamp(torch.round(W.float() / s), -R, R).to(torch.int8)


def dequantize(q: torch.Tensor, scale: torch.Tensor, scale_hi: torch.Tensor | None = None,
               protected_cols: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 weights q·s per row; protected columns (bool mask [cols]) use s_hi instead."""
    W = q.float() * scale.float().view(-1, 1)
    if scale_hi is not None and protected_cols is not None:
        mask = _as_mask(protected_cols, q.shape[1], q.device)
        W[:, mask] = q[:, mask].float() * scale_hi.float().view(-1, 1)
    return W


def hessian_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """Output-space error of a weight perturbation: tr((W-Ŵ) H (W-Ŵ)ᵀ)."""
    D = (W.double() - W_hat.double())
    return float(torch.einsum("ij,jk,ik->", D, H.double().to(D.device), D))


class GPTQResult(NamedTuple):
    q: torch.Tensor
    """int8 [rows, cols] in the original column order."""
    scale: torch.Tensor
    """fp16 [rows] SDClip scale of the ordinary columns."""
    scale_hi: torch.Tensor | None
    """fp16 [rows] scale of the protected (AWQ-lite) columns; None without protection."""


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, bits: int, clip_sigmas: float, block_size: int = 128,
                  damp: float = 0.01, protected_cols: torch.Tensor | None = None,
                  protected_bits: int = 8, factor_dtype: torch.dtype = torch.float32) -> GPTQResult:
    """Quantize W [rows, cols] against the input Hessian H [cols, cols] (runs on W's device).

    `protected_cols`: a bool mask [cols] (or column indices) quantized at
    `protected_bits` with s_hi; ignored unless protected_bits > bits.
    `factor_dtype`: dtype of H's damping and factorization (float32: the record's symbols).
    """
    assert W.ndim == 2 and H.shape == (W.shape[1], W.shape[1]), (W.shape, H.shape)
    device = W.device
    rows, cols = W.shape
    R = qrange(bits)
    W_orig = W.detach().float()
    assert factor_dtype in (torch.float32, torch.float64), factor_dtype
    H = H.detach().to(device=device, dtype=factor_dtype).clone()

    # A column no calibration input ever touched carries no output error:
    # make H well-posed there and quantize it as zero.
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    H.diagonal().add_(damp * H.diagonal().mean())

    perm = torch.argsort(torch.diagonal(H), descending=True)
    invperm = torch.argsort(perm)
    W_work = W_orig[:, perm].clone()
    W_work[:, dead[perm]] = 0.0
    Hinv = _upper_cholesky_of_inverse(H[perm][:, perm]).to(torch.float32)

    s = choose_qparams(W_orig, bits, clip_sigmas)
    sf = s.float().to(device)
    protect: list[bool] | None = None  # per permuted column, on the host: no device sync per column
    s_hi = None
    if protected_cols is not None and qrange(protected_bits) > R:
        mask = _as_mask(protected_cols, cols, device)
        if bool(mask.any()):
            protect = mask[perm].tolist()
            s_hi = choose_qparams(W_orig, protected_bits, clip_sigmas)
    R_hi = qrange(protected_bits)
    sf_hi = s_hi.float().to(device) if s_hi is not None else None

    Q = torch.zeros(rows, cols, dtype=torch.int8, device=device)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W_block = W_work[:, i1:i2].clone()
        Hinv_block = Hinv[i1:i2, i1:i2]
        Err = torch.zeros(rows, i2 - i1, device=device)
        for j in range(i2 - i1):
            w_col = W_block[:, j]
            if protect is not None and protect[i1 + j]:
                q_col = torch.clamp(torch.round(w_col / sf_hi), -R_hi, R_hi)
                w_hat = q_col * sf_hi
            else:
                q_col = torch.clamp(torch.round(w_col / sf), -R, R)
                w_hat = q_col * sf
            Q[:, i1 + j] = q_col.to(torch.int8)
            err = (w_col - w_hat) / Hinv_block[j, j]
            Err[:, j] = err
            W_block[:, j:] -= err.unsqueeze(1) * Hinv_block[j, j:].unsqueeze(0)
        if i2 < cols:
            W_work[:, i2:] -= Err @ Hinv[i1:i2, i2:]
    return GPTQResult(Q[:, invperm].contiguous(), s, s_hi)


def _upper_cholesky_of_inverse(H: torch.Tensor) -> torch.Tensor:
    """U with UᵀU = H⁻¹ (upper), the GPTQ error-propagation matrix.

    The Hessian is damped already; if round-off still leaves it indefinite
    (nearly collinear inputs), add more of the mean diagonal until it factors.
    """
    extra = torch.diagonal(H).mean() * 1e-6
    for _ in range(8):
        L, info = torch.linalg.cholesky_ex(H)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info) == 0:
                return U
        H = H + extra * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
        extra = extra * 10
    raise AssertionError("Hessian is not positive definite even after extra damping")


def _as_mask(cols: torch.Tensor, num_cols: int, device) -> torch.Tensor:
    cols = torch.as_tensor(cols, device=device)
    if cols.dtype == torch.bool:
        assert cols.shape == (num_cols,), (cols.shape, num_cols)
        return cols
    mask = torch.zeros(num_cols, dtype=torch.bool, device=device)
    mask[cols.long()] = True
    return mask


def group_mask(starts: list[int], group_size: int, num_cols: int) -> torch.Tensor:
    """Bool mask [num_cols] of the column groups [start, start + group_size)."""
    mask = torch.zeros(num_cols, dtype=torch.bool)
    for start in starts:
        assert 0 <= start and start + group_size <= num_cols, (start, group_size, num_cols)
        mask[start:start + group_size] = True
    return mask


def awq_group_scores(W: torch.Tensor, act_rms: torch.Tensor, group_size: int) -> torch.Tensor:
    """Saliency of each contiguous input-column group: Σ_{j∈g} act_rms_j · mean_i |W_ij|.

    Groups are [g·size, g·size + size) for g < ⌊cols/size⌋ (a ragged tail is never protected).
    """
    cols = W.shape[1]
    assert act_rms.numel() == cols, (act_rms.shape, W.shape)
    num_groups = cols // group_size
    saliency = act_rms.float().cpu() * W.detach().float().abs().mean(dim=0).cpu()
    return saliency[: num_groups * group_size].view(num_groups, group_size).sum(dim=1)


def awq_select_groups(candidates: dict[str, tuple[torch.Tensor, torch.Tensor]], group_size: int,
                      top_k: int) -> dict[str, list[int]]:
    """The global top-k groups over all candidate tensors: {name: sorted group start columns}.

    `candidates` maps a tensor name to (W [rows, cols], act_rms [cols]). Scores
    are raw (not normalised per tensor), as in #2014; ties keep name order.
    """
    pool: list[tuple[float, int, str, int]] = []
    for order, (name, (W, rms)) in enumerate(candidates.items()):
        for g, score in enumerate(awq_group_scores(W, rms, group_size).tolist()):
            pool.append((score, order, name, g * group_size))
    pool.sort(key=lambda t: (-t[0], t[1], t[3]))
    chosen: dict[str, list[int]] = {}
    for _, _, name, start in pool[: max(top_k, 0)]:
        chosen.setdefault(name, []).append(start)
    return {name: sorted(starts) for name, starts in chosen.items()}
