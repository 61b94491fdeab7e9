"""The device policy: the one place that decides how a run uses its device.

A `DevicePolicy` says, for one device: which parameters are stored in bf16,
whether and in which dtype to autocast, TF32, the `torch.compile` arguments
and dynamo's recompile limits, the attention implementation, whether the
fused Triton kernels run, and whether FlashAttention 3's input contract is
checked. Callers ask it (`policy.autocast()`, `policy.cast_model(m)`,
`policy.compile(fn)`, ...) instead of deciding from `device.type` themselves.

The three policies:

- CUDA (`policy_for("cuda")`): the record's. `tok_emb` is a bf16 parameter
  (the record builds the model in bf16 and restores every other parameter to
  fp32), so the embedding output and with it the residual stream, the LoRA
  deltas, the EMA'd, dequantized and globally-SGD'd embedding are bf16; bf16
  autocast; TF32; FlashAttention 3 when it imports, then one fullgraph
  compile; recompile limits raised as the record does.
- CPU (`policy_for("cpu")`): everything fp32 and eager, no autocast, SDPA:
  what CPU runs and the golden tests have always done.
- CUDA emulated on CPU (`pgolf.emulation`, selected by `PGOLF_EMULATE=cuda`):
  the CUDA policy with device CPU, so a laptop meets the CUDA run's dtypes,
  compile arguments and limits, and FA3's contract.

The process has one active policy (`active()`), which `pgolf.attention` reads
on every call. It starts as the policy of the default device (CUDA when
present); `policy.activate()` replaces it, as a statement or a `with` block.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
from dataclasses import dataclass

import torch

from pgolf.errors import ConfigError

# The record's dynamo limits (its DYNAMO_CACHE_SIZE_LIMIT default and the accumulated limit it
# derives, max(1024, 128)). Training warmup alone builds stage x looping x cu-bucket graphs (15 for the
# record's schedule), beyond dynamo's default of 8; with fullgraph=True the 9th is a hard failure.
RECOMPILE_LIMIT = 128
ACCUMULATED_RECOMPILE_LIMIT = 1024

ATTENTION_IMPLS = ("fa3", "sdpa")


def _import_fa3():
    try:  # FlashAttention 3 ships as `flash_attn_interface` (the hopper build).
        import flash_attn_interface  # type: ignore[import-not-found]
    except Exception:  # ImportError, or a broken CUDA extension on a CPU-only box
        return None
    return flash_attn_interface


FA3 = _import_fa3()
"""The FlashAttention 3 module, or None where it does not import."""


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


@dataclass(frozen=True)
class CompileSpec:
    """Arguments of one `torch.compile` call site."""

    fullgraph: bool
    dynamic: bool | None
    mode: str | None = None


@dataclass(frozen=True)
class DevicePolicy:
    """How a run uses its device; see the module docstring for the three policies."""

    device: torch.device
    emulated: bool = False
    """The CUDA policy running on CPU (`pgolf.emulation`)."""
    lowp_dtype: torch.dtype = torch.float32
    """dtype of the parameters named in `lowp_params`; every other parameter is fp32."""
    lowp_params: tuple[str, ...] = ("tok_emb.weight",)
    """The record's `.bfloat16()` then restore-to-fp32 (banks, CastedLinears, ndim < 2 and control
    tensors) leaves exactly the tied embedding in bf16."""
    rope_freq_dtype: torch.dtype = torch.float32
    """dtype the RoPE inverse frequencies are rounded through. The record's `.bfloat16()` also casts its
    rotary `inv_freq` buffer, so its RoPE runs on bf16-rounded frequencies (up to 0.37% off; 0.55 rad of
    phase at 3072 tokens). Set by `cast_model` on models that declare `rope_freq_dtype`."""
    autocast_dtype: torch.dtype | None = None
    """Autocast dtype of forwards (training, eval, TTT, calibration); None = no autocast."""
    tf32: bool = False
    """TF32 for CUDA fp32 matmuls and convolutions (a no-op on CPU, which has none)."""
    compile_auto: bool = False
    """What `train.compile = "auto"` means here."""
    compile_model: CompileSpec = CompileSpec(fullgraph=False, dynamic=False)
    """Training and diagnostic-eval forwards: static shapes, one graph per (stage, looping, bucket).
    fullgraph only with FA3 or its stand-in: SDPA's packed mask is built from cu_seqlens values,
    which dynamo cannot trace, so that path breaks the graph around attention."""
    compile_ttt: CompileSpec = CompileSpec(fullgraph=False, dynamic=True)
    """The TTT LoRA forward: dynamic shapes (batch rows and chunk lengths vary), graph breaks allowed."""
    recompile_limit: int = RECOMPILE_LIMIT
    accumulated_recompile_limit: int = ACCUMULATED_RECOMPILE_LIMIT
    attention: str = "sdpa"
    """"fa3": FlashAttention 3 on CUDA, its traceable stand-in (a custom op) elsewhere; "sdpa": the reference."""
    fused_kernels: bool = False
    """Training runs the fused Triton MLP and softcapped CE (`pgolf.kernels`, `use_triton=`)."""
    check_fa3_contract: bool = False
    """Attention checks FA3's input contract (dtypes, strides, head dim, cu_seqlens) and raises as FA3 would."""

    def __post_init__(self):
        if self.attention not in ATTENTION_IMPLS:
            raise ConfigError(f"attention={self.attention!r}: expected one of {ATTENTION_IMPLS}")

    # ------------------------------------------------------------------ dtypes
    def cast_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Apply the dtype rule in place: `lowp_params` in `lowp_dtype`, and `rope_freq_dtype`.

        Before building optimizers or EMA (their state takes the parameter's dtype) and before loading a
        state dict (loading then rounds into the bf16 parameter, as the record's dequantization does)."""
        params = dict(model.named_parameters())
        missing = [n for n in self.lowp_params if n not in params]
        if missing:
            raise KeyError(f"dtype rule names parameters the model does not have: {missing}")
        for name in self.lowp_params:
            p = params[name]
            if p.dtype != self.lowp_dtype:
                p.data = p.data.to(self.lowp_dtype)
        if hasattr(model, "rope_freq_dtype"):
            model.rope_freq_dtype = self.rope_freq_dtype
        return model

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward's autocast context (CPU bf16 autocast in emulation), or a no-op."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def apply_matmul_precision(self) -> None:
        """TF32 for CUDA matmuls and cuDNN, process-wide (only on a real CUDA policy).

        Per backend on purpose: `torch.set_float32_matmul_precision("high")` would also switch CPU
        oneDNN matmuls (GPTQ runs some on the CPU) to TF32.
        """
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
            torch.backends.cudnn.allow_tf32 = self.tf32

    # ------------------------------------------------------------------ compile
    def should_compile(self, setting: str) -> bool:
        """`train.compile` ("on" / "off" / "auto") resolved for this device."""
        if setting not in ("on", "off", "auto"):
            raise ConfigError(f"train.compile={setting!r}: expected on, off or auto")
        return setting == "on" or (setting == "auto" and self.compile_auto)

    def apply_dynamo_limits(self) -> None:
        """Raise dynamo's per-code and accumulated recompile limits to the record's (process-wide)."""
        torch._dynamo.config.recompile_limit = self.recompile_limit  # alias: cache_size_limit
        torch._dynamo.config.accumulated_recompile_limit = self.accumulated_recompile_limit

    def compile_kwargs(self, *, ttt: bool = False) -> dict:
        spec = self.compile_ttt if ttt else self.compile_model
        kwargs = {"fullgraph": spec.fullgraph, "dynamic": spec.dynamic}
        if spec.mode is not None:
            kwargs["mode"] = spec.mode
        return kwargs

    def compile(self, fn, *, ttt: bool = False, backend: str = "inductor"):
        """torch.compile `fn` with this policy's arguments, after applying its recompile limits.

        `ttt=True` for the TTT LoRA forward. `backend` exists for tests (aot_eager / eager are
        faster to build on CPU); runs keep inductor.
        """
        self.apply_dynamo_limits()
        return torch.compile(fn, backend=backend, **self.compile_kwargs(ttt=ttt))

    # ------------------------------------------------------------------ process-wide
    def activate(self) -> "_Activation":
        """Make this the process's policy; as a context manager, restore the previous one on exit."""
        return _Activation(self)


class _Activation:
    def __init__(self, policy: DevicePolicy):
        global _ACTIVE
        self.previous = _ACTIVE
        _ACTIVE = policy

    def __enter__(self) -> DevicePolicy:
        return _ACTIVE

    def __exit__(self, *exc) -> None:
        global _ACTIVE
        _ACTIVE = self.previous


# --------------------------------------------------------------------------- constructors
def cpu_policy() -> DevicePolicy:
    return DevicePolicy(device=torch.device("cpu"))


def cuda_policy(device: torch.device | str = "cuda", *, fa3: bool | None = None,
                triton: bool | None = None) -> DevicePolicy:
    """The record's policy for a CUDA device; `fa3` / `triton` default to what imports here."""
    fa3 = FA3 is not None if fa3 is None else fa3
    triton = _triton_installed() if triton is None else triton
    attention = "fa3" if fa3 else "sdpa"
    return DevicePolicy(
        device=torch.device(device), lowp_dtype=torch.bfloat16, rope_freq_dtype=torch.bfloat16,
        autocast_dtype=torch.bfloat16, tf32=True,
        compile_auto=True, compile_model=CompileSpec(fullgraph=fa3, dynamic=False), attention=attention,
        fused_kernels=triton, check_fa3_contract=fa3)


def policy_for(device: torch.device | str) -> DevicePolicy:
    """The policy for `device`: the active one when it is for this kind of device (so an emulated CUDA
    policy activated for the process stays in force), else that device's own."""
    device = torch.device(device)
    if _ACTIVE.device.type == device.type:
        return _ACTIVE if _ACTIVE.device == device else dataclasses.replace(_ACTIVE, device=device)
    if device.type == "cuda":
        return cuda_policy(device)
    if device.type == "cpu":
        return cpu_policy()
    raise ConfigError(f"no device policy for {device.type!r} (cuda or cpu)")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_ACTIVE: DevicePolicy = cuda_policy() if default_device().type == "cuda" else cpu_policy()


def active() -> DevicePolicy:
    """The process's policy (what attention and every `policy`-less caller follow)."""
    return _ACTIVE
