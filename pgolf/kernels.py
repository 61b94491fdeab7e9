"""The two fused training ops of the record, each as an eager reference plus a dispatcher.

- `mlp_leaky_relu_sq(x, w_up, w_down)`: down(LeakyReLU_0.5(up(x))^2), the MLP core.
- `softcapped_cross_entropy(logits, targets, cap, cap_neg, reduction=...)`: cross-entropy
  of softcapped logits, c * tanh(z / c), with an optional second cap for z <= 0 (the
  asymmetric softcap).

The `*_reference` functions are the math `pgolf.model` runs today, op for op. The
dispatchers take the same arguments and run the fused Triton kernels
(`pgolf.triton_kernels`) when `triton_available(...)` says they can, else the reference.
Triton is optional: it is imported only when a Triton path is actually taken.
"""

from __future__ import annotations

import importlib.util
import os

import torch
import torch.nn.functional as F

NEGATIVE_SLOPE = 0.5
IGNORE_INDEX = -100  # F.cross_entropy's default


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_available(*tensors: torch.Tensor) -> bool:
    """True when the fused kernels can run on these tensors.

    That needs Triton importable and either all tensors on CUDA, or `TRITON_INTERPRET=1`
    (Triton's CPU interpreter, which the tests use; it is far too slow for real runs).
    """
    if not triton_installed():
        return False
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return True
    return bool(tensors) and all(t.is_cuda for t in tensors)


def _resolve(use_triton: bool | None, *tensors: torch.Tensor) -> bool:
    """None: decide from the tensors. An explicit choice skips the module lookup, so a caller
    that decided once (outside a torch.compile region, where a module lookup may break the graph)
    pays nothing."""
    if use_triton is None:
        return triton_available(*tensors)
    if use_triton and os.environ.get("TRITON_INTERPRET", "0") != "1" and not all(t.is_cuda for t in tensors):
        raise RuntimeError("use_triton=True, but Triton cannot run here "
                           "(needs CUDA tensors, or TRITON_INTERPRET=1 for the CPU interpreter)")
    return use_triton


# ----------------------------------------------------------------------------- MLP
def mlp_leaky_relu_sq_reference(x: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """down(leaky_relu(up(x), 0.5)^2); x [..., dim], w_up [hidden, dim], w_down [dim, hidden].

    Weights are cast to the activation dtype, as the model does; under autocast the matmuls
    run in the autocast dtype and the result comes back in it.
    """
    hidden = F.leaky_relu(F.linear(x, w_up.to(x.dtype)), negative_slope=NEGATIVE_SLOPE).square()
    return F.linear(hidden, w_down.to(hidden.dtype))


def mlp_leaky_relu_sq(x: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, *,
                      use_triton: bool | None = None) -> torch.Tensor:
    """`mlp_leaky_relu_sq_reference`, fused when possible (use_triton None = decide from the tensors).

    The fused path computes the activation in the up-projection's epilogue and its derivative
    in the epilogue of the backward's `grad_out @ w_down`, so neither is a separate pass over
    the hidden activations; it keeps `pre = up(x)` and `post = leaky(pre)^2` for the backward.
    """
    if not _resolve(use_triton, x, w_up, w_down):
        return mlp_leaky_relu_sq_reference(x, w_up, w_down)
    from pgolf import triton_kernels

    # Autocast does not reach into a custom op, so do its casting here: the matmuls
    # (and so the stored pre/post and the output) take the autocast dtype, as eager F.linear
    # would; the .to() casts carry the gradients back to the fp32 parameters.
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    else:
        dtype = x.dtype
    with torch.autocast(device_type, enabled=False):
        return triton_kernels.mlp_leaky_relu_sq(x.to(dtype), w_up.to(dtype), w_down.to(dtype))


# ---------------------------------------------------------------- softcapped CE
def softcap_reference(z: torch.Tensor, cap: float | torch.Tensor,
                      cap_neg: float | torch.Tensor | None = None) -> torch.Tensor:
    """c * tanh(z / c); with cap_neg, c = cap where z > 0 and cap_neg elsewhere (the asymmetric softcap)."""
    if cap_neg is None:
        return cap * torch.tanh(z / cap)
    cap_pos = cap.to(z.dtype) if isinstance(cap, torch.Tensor) else cap
    cap_neg = cap_neg.to(z.dtype) if isinstance(cap_neg, torch.Tensor) else cap_neg
    return torch.where(z > 0, cap_pos * torch.tanh(z / cap_pos), cap_neg * torch.tanh(z / cap_neg))


def softcapped_cross_entropy_reference(logits: torch.Tensor, targets: torch.Tensor,
                                       cap: float | torch.Tensor, cap_neg: float | torch.Tensor | None = None,
                                       *, reduction: str = "mean", ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """F.cross_entropy(softcap(logits.float()), targets); logits [N, V], targets [N].

    Logits are upcast to fp32 before the softcap, as the model does, so bf16 logits give
    the fp32 loss of their exact values. Returns a scalar, or fp32 [N] for reduction "none".
    """
    capped = softcap_reference(logits.float(), cap, cap_neg)
    return F.cross_entropy(capped, targets, reduction=reduction, ignore_index=ignore_index)


def softcapped_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                             cap: float | torch.Tensor, cap_neg: float | torch.Tensor | None = None,
                             *, reduction: str = "mean", ignore_index: int = IGNORE_INDEX,
                             use_triton: bool | None = None) -> torch.Tensor:
    """`softcapped_cross_entropy_reference`, fused when possible (use_triton None = decide from the tensors).

    The fused path reads the logits once per pass in their own dtype (no fp32 copy, no
    softcapped copy) and saves only a per-row log-sum-exp for the backward. Tensor caps
    (the model's `softcap_pos`/`softcap_neg` parameters) receive gradients on both paths.
    Targets outside [0, V) other than ignore_index are an error in the reference; the fused
    path cannot check them without a host sync and scores such rows 0.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if not _resolve(use_triton, logits, targets):
        return softcapped_cross_entropy_reference(logits, targets, cap, cap_neg,
                                                  reduction=reduction, ignore_index=ignore_index)
    from pgolf import triton_kernels

    cap_neg = cap if cap_neg is None else cap_neg
    losses = triton_kernels.softcapped_ce_losses(logits, targets, cap, cap_neg, ignore_index)
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    # Mean over the scored rows, as F.cross_entropy does with ignore_index (NaN if none are).
    return losses.sum() / (targets != ignore_index).sum()
