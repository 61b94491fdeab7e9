"""CUDA emulated on CPU: the record's CUDA policy with device CPU, and the op that stands in for FA3.

No GPU is needed to run the path every record races on. `emulated_cuda_policy()` is
the CUDA policy (`pgolf.device.cuda_policy`) with device CPU: the bf16 `tok_emb`,
bf16 autocast (CPU autocast where CUDA autocasts), the same compile arguments and
dynamo limits, and FlashAttention 3's input contract checked on every attention
call. Attention runs through `varlen_attention`, a `torch.library` custom op with a
fake implementation, so `torch.compile(fullgraph=True)` traces it exactly as it
traces FA3, and its CPU implementation computes the SDPA reference in the inputs'
dtype, as FA3 does.

`PGOLF_EMULATE=cuda` selects it for a whole process: the `pgolf` command line calls
`activate_from_env()` before any verb (tests may call it or activate the policy
themselves). What emulation cannot reproduce: CPU autocast casts a different op list
than CUDA autocast (CUDA sends `rms_norm`, `pow`, `softmax`, norms and sums to fp32),
TF32 rounding, and FA3's own kernel numerics.

A record run never emulates, so nothing the packed train_gpt.py runs imports this
module; importing it registers the stand-in with `pgolf.attention`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

import torch

from pgolf import attention, device
from pgolf.errors import ConfigError

EMULATE_ENV = "PGOLF_EMULATE"
EMULATE_CHOICES = ("", "cuda")


def read_emulation(environ: Mapping[str, str] = os.environ) -> bool:
    """True when the environment asks for CUDA emulation; anything but unset/empty/"cuda" is an error."""
    value = environ.get(EMULATE_ENV, "").strip().lower()
    if value not in EMULATE_CHOICES:
        raise ConfigError(f"{EMULATE_ENV}={value!r}: expected one of {EMULATE_CHOICES[1:]} or unset")
    return value == "cuda"


def emulated_cuda_policy() -> device.DevicePolicy:
    """The CUDA policy on CPU with FA3 present: its dtypes, autocast, compile arguments and limits, and
    FA3's contract (enforced by the stand-in op). Triton stays off: its CPU interpreter is far too slow."""
    return dataclasses.replace(device.cuda_policy("cuda", fa3=True, triton=False), device=torch.device("cpu"),
                               emulated=True)


def activate_from_env(environ: Mapping[str, str] = os.environ) -> device.DevicePolicy:
    """Make the emulated CUDA policy the process's policy when `PGOLF_EMULATE=cuda`; returns the active one."""
    if read_emulation(environ):
        emulated_cuda_policy().activate()
    return device.active()


# --------------------------------------------------------------------------- FA3's value checks
def _check_fa3_values(q: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> None:
    """Boundary values FA3 trusts without checking (it reads out of range or skips tokens instead)."""
    bounds = cu_seqlens.tolist()
    if bounds[0] != 0 or bounds[-1] != q.shape[1] or any(b < a for a, b in zip(bounds, bounds[1:])):
        attention._fail(f"cu_seqlens must rise from 0 to T={q.shape[1]}, got {bounds}")
    longest = max(b - a for a, b in zip(bounds, bounds[1:]))
    if longest > max_seqlen:
        attention._fail(f"max_seqlen {max_seqlen} < longest document {longest}")




# --------------------------------------------------------------------------- the FA3 stand-in op
# The reference computes in the inputs' dtype, as FA3 does: autocast (which never reaches a custom
# op's inputs) must not re-cast inside either. Outputs are fresh contiguous tensors, as the fake
# implementations promise.
def _reference_forward(q, k, v, cu_seqlens):
    with torch.autocast(q.device.type, enabled=False):
        return attention._attention_sdpa(q, k, v, cu_seqlens).contiguous()


def _varlen_attention_impl(q, k, v, cu_seqlens, max_seqlen, check):
    if check:
        attention.check_fa3_contract(q, k, v, cu_seqlens, max_seqlen)
        if cu_seqlens is not None:
            _check_fa3_values(q, cu_seqlens, max_seqlen)
    return _reference_forward(q, k, v, cu_seqlens)


def _varlen_attention_fake(q, k, v, cu_seqlens, max_seqlen, check):
    if check:  # metadata checks also hold while tracing (compile, or a fake-CUDA dtype trace)
        attention.check_fa3_contract(q, k, v, cu_seqlens, max_seqlen)
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def _sdpa_grads(q, k, v, grad, mask):
    """d(q, k, v) of one chunk of `_sdpa`, written out in fp32; k/v already expanded to q's heads."""
    qf, kf, vf, gf = (t.float().transpose(1, 2) for t in (q, k, v, grad))  # [B, H, T, D]
    scale = qf.shape[-1] ** -0.5
    if mask is None:
        mask = torch.ones(qf.shape[2], qf.shape[2], dtype=torch.bool, device=q.device).tril()
    p = (qf @ kf.transpose(-1, -2) * scale).masked_fill(~mask, float("-inf")).softmax(dim=-1)
    dp = gf @ vf.transpose(-1, -2)
    ds = p * (dp - (dp * p).sum(dim=-1, keepdim=True))
    dq, dk, dv = ds @ kf * scale, ds.transpose(-1, -2) @ qf * scale, p.transpose(-1, -2) @ gf
    return tuple(t.transpose(1, 2) for t in (dq, dk, dv))


def _varlen_attention_backward_impl(grad, q, k, v, cu_seqlens, max_seqlen):
    # A custom op runs below autograd, so the backward is the softmax-attention gradient spelled out,
    # per chunk of whole documents as the forward, then summed over each KV head's query group.
    num_heads, num_kv_heads = q.shape[2], k.shape[2]
    ke, ve = attention._expand_kv(k, num_heads), attention._expand_kv(v, num_heads)
    if cu_seqlens is None:
        dq, dk, dv = _sdpa_grads(q, ke, ve, grad, None)
    else:
        bounds = sorted(set(int(b) for b in cu_seqlens.tolist()))
        parts = []
        for start, end, starts in attention._doc_chunks(bounds, attention._SDPA_CHUNK_TOKENS):
            mask = None if len(starts) == 1 else attention.block_causal_mask(starts, start, end, q.device)
            parts.append(_sdpa_grads(q[:, start:end], ke[:, start:end], ve[:, start:end], grad[:, start:end], mask))
        dq, dk, dv = (torch.cat(ts, dim=1) for ts in zip(*parts))
    group = num_heads // num_kv_heads
    bsz, seq_len, _, head_dim = k.shape
    dk = dk.reshape(bsz, seq_len, num_kv_heads, group, head_dim).sum(dim=3)
    dv = dv.reshape(bsz, seq_len, num_kv_heads, group, head_dim).sum(dim=3)
    return dq.to(q.dtype).contiguous(), dk.to(k.dtype).contiguous(), dv.to(v.dtype).contiguous()


def _varlen_attention_backward_fake(grad, q, k, v, cu_seqlens, max_seqlen):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


# Explicit schemas: the packed submission strips annotations, from which custom_op would infer them.
varlen_attention = torch.library.custom_op(
    "pgolf::varlen_attention", _varlen_attention_impl, mutates_args=(),
    schema="(Tensor q, Tensor k, Tensor v, Tensor? cu_seqlens, SymInt? max_seqlen, bool check) -> Tensor")
varlen_attention.register_fake(_varlen_attention_fake)
varlen_attention_backward = torch.library.custom_op(
    "pgolf::varlen_attention_backward", _varlen_attention_backward_impl, mutates_args=(),
    schema="(Tensor grad, Tensor q, Tensor k, Tensor v, Tensor? cu_seqlens, SymInt? max_seqlen) "
           "-> (Tensor, Tensor, Tensor)")
varlen_attention_backward.register_fake(_varlen_attention_backward_fake)


def _setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens, max_seqlen, _ = inputs
    ctx.save_for_backward(q, k, v, cu_seqlens)
    ctx.max_seqlen = max_seqlen


def _backward(ctx, grad):
    q, k, v, cu_seqlens = ctx.saved_tensors
    dq, dk, dv = varlen_attention_backward(grad, q, k, v, cu_seqlens, ctx.max_seqlen)
    return dq, dk, dv, None, None, None


varlen_attention.register_autograd(_backward, setup_context=_setup_context)


attention.register_fa3_standin(varlen_attention)
