"""Triton kernels for the two fused training ops, each a differentiable `torch.library` custom op.

1. LeakyReLU(0.5)^2 MLP, `down(leaky_relu(up(x), 0.5) ** 2)`. One tiled-matmul kernel
   computes `pre = x @ w_up^T` and applies the activation in its epilogue, writing both
   `pre` (the backward needs the sign and the value) and `post = leaky(pre)^2` (the
   down-projection's input and its weight gradient's left factor) in one pass. The
   backward runs the same kernel on `grad_out @ w_down` with the activation derivative
   `pre > 0 ? 2*pre : 0.5*pre` applied in the epilogue, so `dpre` is never formed from a
   separate elementwise pass. The down-projection and the weight/input gradients stay
   plain `torch` matmuls (cuBLAS), as in the seed.
2. Softcapped cross-entropy. One program per row streams the vocabulary in blocks,
   applies `c * tanh(z / c)` in registers (c = cap_pos where z > 0, else cap_neg) and
   keeps an online log-sum-exp, so the softcapped logits are never written. Only the
   per-row LSE is saved; the backward recomputes the softcap and writes the logit
   gradient, plus per-row partial gradients of the two caps when they need one.

Entry points: `mlp_leaky_relu_sq(x, w_up, w_down)` and `softcapped_ce_losses(logits,
targets, cap_pos, cap_neg, ignore_index)`; both have a registered backward, so autograd
and torch.compile treat them like built-in ops.

This module imports `triton` at import time: load it only through `pgolf.kernels`,
which checks that Triton is importable first. Under `TRITON_INTERPRET=1` (set before
the first `import triton`) the same kernels run on CPU tensors, which is how the tests
check them.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

NEGATIVE_SLOPE = tl.constexpr(0.5)  # constexpr: a plain global cannot be read inside @triton.jit


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _cast(x, dtype: tl.constexpr, EMULATE_RNE: tl.constexpr):
    """x (fp32) -> dtype, rounding to nearest-even as the GPU does.

    Triton's CPU interpreter truncates fp32 -> bf16; with EMULATE_RNE the rounding is done
    on the bits first (add half an ulp, ties to even, clear the low 16 bits), so the
    interpreter stores the same bf16 values a GPU would.
    """
    if EMULATE_RNE and dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


# ----------------------------------------------------------------------------- MLP
@triton.jit
def _matmul_leaky_relu_sq_kernel(
    a_ptr, b_ptr, out_ptr, aux_ptr,
    M, N, K,
    stride_am, stride_ak, stride_bn, stride_bk,
    stride_om, stride_on, stride_xm, stride_xn,
    FORWARD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, INTERPRET: tl.constexpr,
):
    """acc = A[M,K] @ B[N,K]^T in fp32, then an activation epilogue.

    FORWARD: out <- pre = acc (rounded to the output dtype), aux <- leaky(pre)^2.
    backward: aux holds `pre`; out <- acc * (pre > 0 ? 2*pre : 0.5*pre).
    INTERPRET: work around the CPU interpreter's bf16 handling (same results as a GPU).
    """
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    # Grouped tile order: GROUP_M row-tiles sweep the column tiles together, so a
    # column tile of B is reused from L2 by several programs in flight.
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % num_pid_in_group) % group_size_m
    pid_n = (pid % num_pid_in_group) // group_size_m

    # int64 offsets: rows x hidden of a full training micro-batch can pass 2^31 elements.
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        mask_k = k < K
        a = tl.load(a_ptr + offs_m[:, None] * stride_am + k[None, :] * stride_ak,
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        # B is read transposed ([BLOCK_K, BLOCK_N]) straight from its [N, K] layout.
        b = tl.load(b_ptr + offs_n[None, :] * stride_bn + k[:, None] * stride_bk,
                    mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        if INTERPRET:
            # Exact for 16-bit operands (their products fit fp32), so this only changes
            # summation order; the interpreter needs it, its bf16 dot returns garbage.
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

    mask = mask_m[:, None] & mask_n[None, :]
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    aux_ptrs = aux_ptr + offs_m[:, None] * stride_xm + offs_n[None, :] * stride_xn
    if FORWARD:
        # Round `pre` to the storage dtype first, then activate the rounded value: the
        # eager path does the same (F.linear returns bf16 under autocast, the activation
        # reads that), and the backward sees exactly the `pre` the forward used.
        pre = _cast(acc, out_ptr.dtype.element_ty, INTERPRET)
        tl.store(out_ptrs, pre, mask=mask)
        pre32 = pre.to(tl.float32)
        act = tl.where(pre32 > 0, pre32, NEGATIVE_SLOPE * pre32)
        tl.store(aux_ptrs, _cast(act * act, aux_ptr.dtype.element_ty, INTERPRET), mask=mask)
    else:
        pre32 = tl.load(aux_ptrs, mask=mask, other=0.0).to(tl.float32)
        # d/dpre leaky(pre)^2 = 2*leaky(pre)*leaky'(pre): 2*pre above zero, 2*(s*pre)*s below.
        dact = tl.where(pre32 > 0, 2.0 * pre32, 2.0 * NEGATIVE_SLOPE * NEGATIVE_SLOPE * pre32)
        tl.store(out_ptrs, _cast(acc * dact, out_ptr.dtype.element_ty, INTERPRET), mask=mask)


def _matmul_config(dtype: torch.dtype) -> dict:
    if _interpreting():
        # The interpreter runs every program in Python: small tiles keep tests fast and
        # still exercise the masked edges of several tiles in each dimension.
        return dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=16, GROUP_M=2)
    # 128x128 output tiles, 8 warps; fp32 operands halve BLOCK_K to stay in shared memory.
    block_k = 32 if dtype == torch.float32 else 64
    return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=block_k, GROUP_M=8, num_warps=8, num_stages=3)


def _input_precision(dtype: torch.dtype) -> str:
    # fp32 operands follow torch's matmul setting (the record turns TF32 on), so the fused
    # matmul uses the same precision as the eager F.linear it replaces.
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 and not _interpreting():
        return "tf32"
    return "ieee"


def _launch_matmul(a: torch.Tensor, b_nk: torch.Tensor, out: torch.Tensor, aux: torch.Tensor, forward: bool) -> None:
    M, K = a.shape
    N = b_nk.shape[0]
    cfg = _matmul_config(a.dtype)
    grid = (triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"]),)
    _matmul_leaky_relu_sq_kernel[grid](
        a, b_nk, out, aux, M, N, K,
        a.stride(0), a.stride(1), b_nk.stride(0), b_nk.stride(1),
        out.stride(0), out.stride(1), aux.stride(0), aux.stride(1),
        FORWARD=forward, INPUT_PRECISION=_input_precision(a.dtype), INTERPRET=_interpreting(), **cfg,
    )


def linear_leaky_relu_sq(x2d: torch.Tensor, w_up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pre, post) = (x2d @ w_up^T, leaky_relu(pre, 0.5)^2), both [M, hidden] in x2d's dtype."""
    M, N = x2d.shape[0], w_up.shape[0]
    pre = torch.empty((M, N), device=x2d.device, dtype=x2d.dtype)
    post = torch.empty_like(pre)
    _launch_matmul(x2d, w_up, pre, post, forward=True)
    return pre, post


def linear_leaky_relu_sq_backward(grad_out2d: torch.Tensor, w_down: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """dpre = (grad_out2d @ w_down) * leaky_sq'(pre), [M, hidden] in pre's dtype."""
    dpre = torch.empty_like(pre)
    # grad_out @ w_down is A @ B^T with B = w_down^T ([hidden, dim]): a strided view, no copy.
    _launch_matmul(grad_out2d, w_down.t(), dpre, pre, forward=False)
    return dpre


def _mlp_forward_impl(x2d: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor):
    if not (x2d.dtype == w_up.dtype == w_down.dtype):
        raise TypeError(f"dtypes differ: x {x2d.dtype}, w_up {w_up.dtype}, w_down {w_down.dtype}")
    pre, post = linear_leaky_relu_sq(x2d, w_up)
    return F.linear(post, w_down), pre, post


def _mlp_forward_fake(x2d, w_up, w_down):
    rows, hidden = x2d.shape[0], w_up.shape[0]
    return x2d.new_empty((rows, w_down.shape[0])), x2d.new_empty((rows, hidden)), x2d.new_empty((rows, hidden))


def _mlp_backward_impl(grad_out, x2d, w_up, w_down, pre, post, need_x: bool, need_up: bool, need_down: bool):
    g = grad_out.to(x2d.dtype)
    # A gradient nobody asked for comes back empty (a custom op cannot return None).
    dw_down = g.t() @ post if need_down else x2d.new_empty(0)
    dx, dw_up = x2d.new_empty(0), x2d.new_empty(0)
    if need_x or need_up:
        dpre = linear_leaky_relu_sq_backward(g, w_down, pre)
        if need_up:
            dw_up = dpre.t() @ x2d
        if need_x:
            dx = dpre @ w_up
    return dx, dw_up, dw_down


def _mlp_backward_fake(grad_out, x2d, w_up, w_down, pre, post, need_x, need_up, need_down):
    return (x2d.new_empty(x2d.shape if need_x else (0,)), x2d.new_empty(w_up.shape if need_up else (0,)),
            x2d.new_empty(w_down.shape if need_down else (0,)))


# Custom ops rather than a bare autograd.Function: torch.compile(fullgraph=True) then sees
# each kernel launch as one opaque node with a fake implementation for shapes, as it does
# for FlashAttention. Schemas are explicit so nothing depends on type annotations.
_mlp_forward_op = torch.library.custom_op(
    "pgolf::mlp_leaky_relu_sq", _mlp_forward_impl, mutates_args=(),
    schema="(Tensor x, Tensor w_up, Tensor w_down) -> (Tensor, Tensor, Tensor)")
_mlp_forward_op.register_fake(_mlp_forward_fake)
_mlp_backward_op = torch.library.custom_op(
    "pgolf::mlp_leaky_relu_sq_backward", _mlp_backward_impl, mutates_args=(),
    schema="(Tensor grad_out, Tensor x, Tensor w_up, Tensor w_down, Tensor pre, Tensor post, "
           "bool need_x, bool need_up, bool need_down) -> (Tensor, Tensor, Tensor)")
_mlp_backward_op.register_fake(_mlp_backward_fake)


def _mlp_setup_context(ctx, inputs, output):
    _, pre, post = output
    ctx.save_for_backward(*inputs, pre, post)


def _mlp_backward(ctx, grad_out, _grad_pre, _grad_post):
    # pre and post are outputs only so the forward's values can be saved; nothing downstream uses them.
    need = ctx.needs_input_grad
    grads = _mlp_backward_op(grad_out, *ctx.saved_tensors, *need)
    return tuple(g if n else None for g, n in zip(grads, need))


_mlp_forward_op.register_autograd(_mlp_backward, setup_context=_mlp_setup_context)


def mlp_leaky_relu_sq(x: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """leaky_relu(x @ w_up^T, 0.5)^2 @ w_down^T, differentiable.

    Shapes: x [..., dim], w_up [hidden, dim], w_down [dim_out, hidden].

    All three must share one dtype (fp32, bf16 or fp16): the caller resolves autocast. Saves
    x, both weights, pre and post for the backward: one hidden-sized tensor less than eager
    autograd, which also keeps leaky(pre) for the square's backward.
    """
    out, _, _ = _mlp_forward_op(x.reshape(-1, x.shape[-1]), w_up, w_down)
    return out.reshape(*x.shape[:-1], out.shape[-1])


# ---------------------------------------------------------------- softcapped CE
@triton.jit
def _tanh(u):
    """tanh in fp32 from exp; a Taylor polynomial near zero, where 1 - e^{-2|u|} cancels."""
    a = tl.abs(u)
    e = tl.exp(-2.0 * a)
    big = (1.0 - e) / (1.0 + e)
    u2 = u * u
    # Through u^7: the first dropped term, 62/2835 u^9, is < 2e-10 for |u| < 0.125.
    small = u * (1.0 + u2 * (-1.0 / 3.0 + u2 * (2.0 / 15.0 + u2 * (-17.0 / 315.0))))
    return tl.where(a < 0.125, small, tl.where(u < 0, -big, big))


@triton.jit
def _softcapped_ce_fwd_kernel(
    logits_ptr, targets_ptr, caps_ptr, losses_ptr, lse_ptr,
    n_cols, stride_row, stride_col, ignore_index,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    cap_pos = tl.load(caps_ptr)
    cap_neg = tl.load(caps_ptr + 1)

    # Online log-sum-exp over the vocabulary, one block at a time.
    run_max = -float("inf")
    run_sum = 0.0
    for off in range(0, n_cols, BLOCK_V):
        cols = off + tl.arange(0, BLOCK_V)
        mask = cols < n_cols
        z = tl.load(row_ptr + cols * stride_col, mask=mask, other=0.0).to(tl.float32)
        cap = tl.where(z > 0, cap_pos, cap_neg)
        y = tl.where(mask, cap * _tanh(z / cap), -float("inf"))
        new_max = tl.maximum(run_max, tl.max(y, axis=0))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(y - new_max), axis=0)
        run_max = new_max
    lse = run_max + tl.log(run_sum)
    tl.store(lse_ptr + row, lse)

    target = tl.load(targets_ptr + row)
    # An ignored (or out-of-range) target reads nothing and scores 0, like F.cross_entropy's ignore_index.
    valid = (target != ignore_index) & (target >= 0) & (target < n_cols)
    zt = tl.load(row_ptr + tl.where(valid, target, 0) * stride_col, mask=valid, other=0.0).to(tl.float32)
    cap_t = tl.where(zt > 0, cap_pos, cap_neg)
    yt = cap_t * _tanh(zt / cap_t)
    tl.store(losses_ptr + row, tl.where(valid, lse - yt, 0.0))


@triton.jit
def _softcapped_ce_bwd_kernel(
    logits_ptr, targets_ptr, caps_ptr, lse_ptr, grad_losses_ptr, grad_logits_ptr, grad_caps_ptr,
    n_cols, stride_row, stride_col, stride_grow, stride_gcol, stride_gloss, ignore_index,
    BLOCK_V: tl.constexpr, CAP_GRAD: tl.constexpr, INTERPRET: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    grad_row_ptr = grad_logits_ptr + row * stride_grow
    cap_pos = tl.load(caps_ptr)
    cap_neg = tl.load(caps_ptr + 1)
    lse = tl.load(lse_ptr + row)
    target = tl.load(targets_ptr + row)
    valid = (target != ignore_index) & (target >= 0) & (target < n_cols)
    g = tl.where(valid, tl.load(grad_losses_ptr + row * stride_gloss).to(tl.float32), 0.0)

    acc_pos = 0.0
    acc_neg = 0.0
    for off in range(0, n_cols, BLOCK_V):
        cols = off + tl.arange(0, BLOCK_V)
        mask = cols < n_cols
        z = tl.load(row_ptr + cols * stride_col, mask=mask, other=0.0).to(tl.float32)
        cap = tl.where(z > 0, cap_pos, cap_neg)
        u = z / cap
        th = _tanh(u)
        # dloss/dy for y = softcapped logit: softmax(y) - onehot(target), times the row's upstream grad.
        dy = g * (tl.exp(cap * th - lse) - tl.where(cols == target, 1.0, 0.0))
        sech2 = 1.0 - th * th
        tl.store(grad_row_ptr + cols * stride_gcol, _cast(dy * sech2, grad_logits_ptr.dtype.element_ty, INTERPRET),
                 mask=mask)
        if CAP_GRAD:
            # d/dc [c * tanh(z/c)] = tanh(u) - u * sech^2(u), u = z/c.
            dc = tl.where(mask, dy * (th - u * sech2), 0.0)
            acc_pos += tl.sum(tl.where(z > 0, dc, 0.0), axis=0)
            acc_neg += tl.sum(tl.where(z > 0, 0.0, dc), axis=0)
    if CAP_GRAD:
        tl.store(grad_caps_ptr + row * 2, acc_pos)
        tl.store(grad_caps_ptr + row * 2 + 1, acc_neg)


def _ce_config() -> dict:
    if _interpreting():
        return dict(BLOCK_V=32)  # several blocks per row even at a test vocab of ~100
    return dict(BLOCK_V=1024, num_warps=4)


def _caps_tensor(cap_pos, cap_neg, device) -> torch.Tensor:
    """[cap_pos, cap_neg] as fp32 on `device`, differentiable in tensor caps; built on device, so a
    parameter cap costs no host sync."""
    def as_t(c):
        if isinstance(c, torch.Tensor):
            return c.to(device=device, dtype=torch.float32).reshape(())
        return torch.full((), float(c), device=device, dtype=torch.float32)
    return torch.stack((as_t(cap_pos), as_t(cap_neg)))


def _ce_forward_impl(logits: torch.Tensor, targets: torch.Tensor, caps: torch.Tensor, ignore_index: int):
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"expected logits [N, V] and targets [N], "
                         f"got {tuple(logits.shape)} and {tuple(targets.shape)}")
    n_rows, n_cols = logits.shape
    losses = torch.empty(n_rows, device=logits.device, dtype=torch.float32)
    lse = torch.empty_like(losses)
    if n_rows:
        _softcapped_ce_fwd_kernel[(n_rows,)](
            logits, targets, caps, losses, lse,
            n_cols, logits.stride(0), logits.stride(1), ignore_index, **_ce_config(),
        )
    return losses, lse


def _ce_forward_fake(logits, targets, caps, ignore_index):
    rows = logits.shape[:1]
    return logits.new_empty(rows, dtype=torch.float32), logits.new_empty(rows, dtype=torch.float32)


def _ce_backward_impl(grad_losses, logits, targets, caps, lse, ignore_index: int, need_caps: bool):
    n_rows, n_cols = logits.shape
    grad_logits = torch.empty_like(logits)
    # Per-row partial cap gradients, summed here: a deterministic reduction, no atomics.
    row_cap_grads = torch.zeros((n_rows if need_caps else 0, 2), device=logits.device, dtype=torch.float32)
    if n_rows:
        _softcapped_ce_bwd_kernel[(n_rows,)](
            logits, targets, caps, lse, grad_losses, grad_logits, row_cap_grads,
            n_cols, logits.stride(0), logits.stride(1), grad_logits.stride(0), grad_logits.stride(1),
            grad_losses.stride(0), ignore_index, CAP_GRAD=need_caps, INTERPRET=_interpreting(),
            **_ce_config(),
        )
    return grad_logits, row_cap_grads.sum(dim=0) if need_caps else caps.new_empty(0)


def _ce_backward_fake(grad_losses, logits, targets, caps, lse, ignore_index, need_caps):
    return torch.empty_like(logits), caps.new_empty((2,) if need_caps else (0,))


_ce_forward_op = torch.library.custom_op(
    "pgolf::softcapped_ce", _ce_forward_impl, mutates_args=(),
    schema="(Tensor logits, Tensor targets, Tensor caps, int ignore_index) -> (Tensor, Tensor)")
_ce_forward_op.register_fake(_ce_forward_fake)
_ce_backward_op = torch.library.custom_op(
    "pgolf::softcapped_ce_backward", _ce_backward_impl, mutates_args=(),
    schema="(Tensor grad_losses, Tensor logits, Tensor targets, Tensor caps, Tensor lse, int ignore_index, "
           "bool need_caps) -> (Tensor, Tensor)")
_ce_backward_op.register_fake(_ce_backward_fake)


def _ce_setup_context(ctx, inputs, output):
    logits, targets, caps, ignore_index = inputs
    ctx.save_for_backward(logits, targets, caps, output[1])
    ctx.ignore_index = ignore_index


def _ce_backward(ctx, grad_losses, _grad_lse):
    logits, targets, caps, lse = ctx.saved_tensors
    need_logits, _, need_caps, _ = ctx.needs_input_grad
    grad_logits, grad_caps = _ce_backward_op(grad_losses, logits, targets, caps, lse, ctx.ignore_index, need_caps)
    return (grad_logits if need_logits else None), None, (grad_caps if need_caps else None), None


_ce_forward_op.register_autograd(_ce_backward, setup_context=_ce_setup_context)


def softcapped_ce_losses(logits: torch.Tensor, targets: torch.Tensor, cap_pos, cap_neg,
                         ignore_index: int = -100) -> torch.Tensor:
    """Per-row NLL of softmax(softcap(logits)) at `targets`, fp32 [N]; logits [N, V] in any float dtype.

    softcap(z) = c * tanh(z / c) with c = cap_pos where z > 0 and cap_neg elsewhere (pass the
    same cap twice for the symmetric softcap). Caps are floats or 0-dim tensors; tensor caps
    get gradients. Rows whose target equals `ignore_index` score 0 and get no gradient.
    """
    # The kernels index targets as a dense vector; a strided view would be read wrong.
    targets = targets.contiguous()
    losses, _ = _ce_forward_op(logits, targets, _caps_tensor(cap_pos, cap_neg, logits.device), ignore_index)
    return losses
