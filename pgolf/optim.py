"""Muon for the four weight banks, AdamW for everything else, and all gradient traffic between ranks.

The idea: a bank `[n, rows, cols]` is n independent matrices, so Muon can shard the bank dimension. Each
rank receives the average gradient of only its n/world slices (reduce-scatter), runs momentum, MuonEq-R
row normalisation and the Polar Express orthogonalisation on them, and the orthogonalised updates are
all-gathered so every rank applies the same full update. The small replicated tensors (embedding,
scalars, gates) are all-reduced (average) and stepped by AdamW on every rank. There is no DDP wrapper:
all communication happens inside `Optimizers.step()`, and at world size 1 the very same code runs with
the collectives skipped (a shard is then the whole bank).

Which parameter goes to which optimizer is data: `PARAM_TABLE`, one row per name pattern, and
`build_optimizers` refuses a model in which any parameter matches zero or several rows.

Per bank slice (record: `Muon.step`), with μ the momentum and lr the scheduled rate:
    buf = μ·buf + g;  u = g + μ·buf                    Nesterov
    u /= max(‖u_row‖₂, 1e-7)                           MuonEq-R
    u = PolarExpress(u)                                5 minimax-tuned Newton-Schulz steps
    p *= 1 - lr·wd;  p -= lr·√max(1, rows/cols)·u      decoupled weight decay, shape scale

Under the record's device policy (CUDA, or CUDA emulated on CPU) the gradient, momentum, orthogonalisation
and communication run in bf16 and AdamW is fused, like the record; under the CPU policy everything stays
fp32 and AdamW foreach (the exact reference path).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn

from pgolf.config import TrainConfig
from pgolf.device import policy_for
from pgolf.errors import ConfigError

# Polar Express (Amsel et al. 2025) per-iteration (a, b, c) for X <- aX + (bA + cA^2)X, A = XX^T: each
# tuple is the minimax-optimal odd quintic for the singular-value interval left by the previous one,
# so 5 steps map normalized singular values in [1e-3, 1] into [0.86, 1.14] (exact arithmetic; bf16 rounding
# widens that a little). These are the record's values (PR #1344).
PE_COEFFS: tuple[tuple[float, float, float], ...] = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)

# Replicated gradients up to this size are packed into one flat buffer per dtype, so the ~60 tiny
# scalar tensors of the record cost one collective instead of sixty (record: 32,768).
PACKED_GRAD_MAX_NUMEL = 1 << 15


def default_work_dtype(device: torch.device) -> torch.dtype:
    """The policy's compute dtype: bf16 under the record's (CUDA or emulated) policy, fp32 under the CPU one."""
    return policy_for(device).autocast_dtype or torch.float32


def zeropower_polar_express(G: torch.Tensor, steps: int = 5, eps: float = 1e-7,
                            dtype: torch.dtype | None = None) -> torch.Tensor:
    """Approximate the orthogonal polar factor U·Vᵀ of each matrix in G (`[..., rows, cols]`).

    Works on the wide orientation (rows <= cols) so that A = XXᵀ is the small Gram matrix, and starts
    from X/‖X‖_F so every singular value lies in [0, 1]. Returns `dtype` (default: `default_work_dtype`)
    in G's orientation.
    """
    assert G.ndim >= 2, f"need at least a matrix, got shape {tuple(G.shape)}"
    assert 1 <= steps <= len(PE_COEFFS), f"Polar Express has {len(PE_COEFFS)} tuned steps, asked for {steps}"
    X = G.to(dtype or default_work_dtype(G.device))
    transposed = X.size(-2) > X.size(-1)
    if transposed:
        X = X.mT
    X = X / (torch.linalg.matrix_norm(X, keepdim=True) + eps)
    for a, b, c in PE_COEFFS[:steps]:
        A = X @ X.mT
        X = a * X + (b * A + c * (A @ A)) @ X
    return X.mT if transposed else X


def row_normalize(u: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """MuonEq-R: scale each row of each matrix to unit L2 norm (norm computed in fp32)."""
    norms = u.float().norm(dim=-1, keepdim=True).clamp_min(eps)
    return u / norms.to(u.dtype)


def shape_scale(rows: int, cols: int) -> float:
    """√max(1, rows/cols): tall matrices (mlp_up, 4x) get a larger step so their RMS update matches."""
    return math.sqrt(max(1.0, rows / cols))


# --------------------------------------------------------------------------- communication
class _Pending:
    """A launched collective plus the host-side work that completes it (averaging, slicing)."""

    def __init__(self, work: Any | None = None, finish: Callable[[], None] | None = None):
        self.work, self.finish = work, finish

    def wait(self) -> None:
        if self.work is not None:
            self.work.wait()
        if self.finish is not None:
            self.finish()


class Comm:
    """The default process group as Muon/Optimizers use it; every method is a local copy at world size 1.

    Averaging: NCCL has ReduceOp.AVG; gloo historically does not, so there we SUM and divide (identical
    numerics for fp32 at the world sizes we test). Reduce-scatter: some gloo builds lack it, so the first
    call probes it and, if it raises, every later call all-reduces the whole padded tensor and keeps this
    rank's slice: more traffic, same result. `reduce_scatter_impl` = "auto" | "native" | "all_reduce"
    pins the choice (tests force "all_reduce" to cover the fallback).
    """

    def __init__(self, reduce_scatter_impl: str = "auto"):
        on = dist.is_available() and dist.is_initialized()
        self.world_size = dist.get_world_size() if on else 1
        self.rank = dist.get_rank() if on else 0
        self.backend = str(dist.get_backend()) if on else "none"
        assert reduce_scatter_impl in ("auto", "native", "all_reduce"), reduce_scatter_impl
        self.reduce_scatter_impl = reduce_scatter_impl

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def _avg_op(self):
        return dist.ReduceOp.AVG if self.backend == "nccl" else dist.ReduceOp.SUM

    def _divide(self, t: torch.Tensor) -> Callable[[], None] | None:
        return None if self.backend == "nccl" else (lambda: t.div_(self.world_size))

    def all_reduce_avg(self, t: torch.Tensor) -> _Pending:
        if not self.enabled:
            return _Pending()
        return _Pending(dist.all_reduce(t, op=self._avg_op(), async_op=True), self._divide(t))

    def reduce_scatter_avg(self, shard: torch.Tensor, full: torch.Tensor) -> _Pending:
        """shard <- mean over ranks of full[rank*k:(rank+1)*k] with k = len(shard)."""
        assert full.shape[0] == shard.shape[0] * self.world_size
        if not self.enabled:
            shard.copy_(full)
            return _Pending()
        if self.reduce_scatter_impl in ("auto", "native"):
            fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
            try:
                work = fn(shard, full, op=self._avg_op(), async_op=True)
                self.reduce_scatter_impl = "native"
                return _Pending(work, self._divide(shard))
            except (RuntimeError, NotImplementedError, ValueError):
                if self.reduce_scatter_impl == "native":
                    raise
                self.reduce_scatter_impl = "all_reduce"
        k = shard.shape[0]
        lo = self.rank * k

        def finish() -> None:
            shard.copy_(full[lo:lo + k])
            if self.backend != "nccl":
                shard.div_(self.world_size)

        return _Pending(dist.all_reduce(full, op=self._avg_op(), async_op=True), finish)

    def all_gather(self, full: torch.Tensor, shard: torch.Tensor) -> _Pending:
        if not self.enabled:
            full.copy_(shard)
            return _Pending()
        fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        return _Pending(fn(full, shard.contiguous(), async_op=True))


# --------------------------------------------------------------------------- Muon
class Muon(torch.optim.Optimizer):
    """Sharded Muon over 3-D banks `[n, rows, cols]`; each n-slice is an independent matrix.

    State: `momentum_buffer` holds only this rank's shard `[ceil(n/world), rows, cols]` in the work
    dtype. `state_dict()` gathers the shards into full `[n, rows, cols]` buffers (so a checkpoint does
    not depend on the world size) and is therefore a collective at world size > 1: call it on every rank.
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float, momentum: float, weight_decay: float = 0.0,
                 backend_steps: int = 5, row_normalize: bool = True, nesterov: bool = True,
                 work_dtype: torch.dtype | None = None, reduce_scatter_impl: str = "auto",
                 orthogonalize: Callable[..., torch.Tensor] = zeropower_polar_express):
        defaults = dict(lr=lr, base_lr=lr, momentum=momentum, weight_decay=weight_decay,
                        backend_steps=backend_steps, row_normalize=row_normalize, nesterov=nesterov)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                assert p.ndim == 3, f"Muon takes banks [n, rows, cols], got shape {tuple(p.shape)}"
        self._work_dtype = work_dtype
        # Swappable so the caller can hand in a torch.compile'd Polar Express (CUDA): same math, fused kernels.
        self.orthogonalize = orthogonalize
        self._reduce_scatter_impl = reduce_scatter_impl
        self._comm: Comm | None = None
        self._pending: dict[int, tuple[_Pending, torch.Tensor]] = {}

    # The process group may be created after the optimizer, so look it up on first use.
    @property
    def comm(self) -> Comm:
        if self._comm is None:
            self._comm = Comm(self._reduce_scatter_impl)
        return self._comm

    def work_dtype(self, p: torch.Tensor) -> torch.dtype:
        return self._work_dtype or default_work_dtype(p.device)

    def shard_len(self, p: torch.Tensor) -> int:
        return -(-p.shape[0] // self.comm.world_size)

    def _banks(self) -> list[tuple[dict, nn.Parameter]]:
        # Largest first, like the record: the big all-gathers start earliest and overlap the small banks.
        pairs = [(g, p) for g in self.param_groups for p in g["params"]]
        return sorted(pairs, key=lambda gp: -gp[1].numel())

    @torch.no_grad()
    def launch_reduce_scatters(self) -> None:
        """Start averaging every bank gradient onto its owner shard; `step()` waits for them."""
        for _, p in self._banks():
            if p.grad is None or id(p) in self._pending:
                continue
            k = self.shard_len(p)
            full = p.grad.new_zeros((k * self.comm.world_size, *p.shape[1:]), dtype=self.work_dtype(p))
            full[: p.shape[0]].copy_(p.grad)
            shard = full.new_empty((k, *p.shape[1:]))
            self._pending[id(p)] = (self.comm.reduce_scatter_avg(shard, full), shard)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.launch_reduce_scatters()
        gathers = []
        for group, p in self._banks():
            if id(p) not in self._pending:
                continue  # no gradient this step (identically on every rank: same graph everywhere)
            pending, g = self._pending.pop(id(p))
            pending.wait()
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(g)
            buf = state["momentum_buffer"]
            mu = group["momentum"]
            buf.mul_(mu).add_(g)
            u = g.add(buf, alpha=mu) if group["nesterov"] else buf.clone()
            if group["row_normalize"]:
                u = row_normalize(u)
            u = self.orthogonalize(u, steps=group["backend_steps"], dtype=self.work_dtype(p))
            full = u.new_empty((u.shape[0] * self.comm.world_size, *u.shape[1:]))
            gathers.append((group, p, full, self.comm.all_gather(full, u)))
        for group, p, full, pending in gathers:
            pending.wait()
            lr, wd = group["lr"], group["weight_decay"]
            if wd > 0:
                p.mul_(1.0 - lr * wd)
            p.add_(full[: p.shape[0]].to(p.dtype), alpha=-lr * shape_scale(p.shape[-2], p.shape[-1]))
        return loss

    # -- checkpointing: full buffers on disk, shards in memory --------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        params = [p for g in self.param_groups for p in g["params"]]
        for idx, p in enumerate(params):
            st = sd["state"].get(idx)
            if st is None or "momentum_buffer" not in st:
                continue
            shard = st["momentum_buffer"]
            full = shard.new_empty((shard.shape[0] * self.comm.world_size, *shard.shape[1:]))
            self.comm.all_gather(full, shard).wait()
            st = dict(st)
            st["momentum_buffer"] = full[: p.shape[0]].clone()
            sd["state"][idx] = st
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._pending.clear()
        for g in self.param_groups:
            for p in g["params"]:
                st = self.state.get(p)
                if not st or "momentum_buffer" not in st:
                    continue
                full_buf = st["momentum_buffer"]
                assert full_buf.shape == p.shape, f"momentum buffer {tuple(full_buf.shape)} != bank {tuple(p.shape)}"
                k = self.shard_len(p)
                padded = full_buf.new_zeros((k * self.comm.world_size, *p.shape[1:]), dtype=self.work_dtype(p))
                padded[: p.shape[0]].copy_(full_buf)
                lo = self.comm.rank * k
                st["momentum_buffer"] = padded[lo:lo + k].clone()


# --------------------------------------------------------------------------- parameter table
@dataclass(frozen=True)
class ParamRule:
    """One row of the parameter table: which optimizer steps the parameters whose name fully matches."""
    pattern: str
    optimizer: str
    """muon | adam_embed | adam_scalar | frozen (belongs to no optimizer, never changes)."""
    lr_field: str | None
    """TrainConfig field holding the base learning rate."""
    wd_field: str | None
    betas: tuple[str, str] | None
    """TrainConfig fields holding Adam's (beta1, beta2)."""

    def matches(self, name: str) -> bool:
        return re.fullmatch(self.pattern, name) is not None


_B = ("beta1", "beta2")
# The record sends every block tensor with ndim < 2, plus the control tensors named below, to the scalar
# AdamW. Here every name is listed explicitly instead, so a new parameter cannot silently land in some
# optimizer: it fails `build_optimizers` until it gets a row.
PARAM_TABLE: tuple[ParamRule, ...] = (
    #         name pattern (full match)                              optimizer      lr field         wd field    betas
    ParamRule(r"(qo|kv|mlp_up|mlp_down)_bank",                       "muon",        "matrix_lr",     "muon_wd",  None),
    ParamRule(r"tok_emb\.weight",                                    "adam_embed",  "tied_embed_lr", "embed_wd", _B),
    ParamRule(r"blocks\.\d+\.(attn_scale|mlp_scale|resid_mix)",      "adam_scalar", "scalar_lr",     "adam_wd",  _B),
    ParamRule(r"blocks\.\d+\.attn\.(q_gain|attn_gate_w)",            "adam_scalar", "scalar_lr",     "adam_wd",  _B),
    ParamRule(r"skip_weights|skip_gates",                            "adam_scalar", "scalar_lr",     "adam_wd",  _B),
    ParamRule(r"parallel_resid_lambdas|parallel_post_lambdas",       "adam_scalar", "scalar_lr",     "adam_wd",  _B),
    ParamRule(r"smear_gate\.weight|smear_lambda",                    "adam_scalar", "scalar_lr",     "adam_wd",  _B),
    # #2014's asymmetric softcap scalars: in the seed no optimizer holds them and the training loss does
    # not use them, so they stay at their init (30.0) forever (seed-delta-spec §3.1).
    ParamRule(r"softcap_pos|softcap_neg",                            "frozen",      None,            None,       None),
)

OPTIMIZER_NAMES = ("muon", "adam_embed", "adam_scalar", "frozen")


def assign_params(named_params: Iterable[tuple[str, nn.Parameter]],
                  table: tuple[ParamRule, ...] = PARAM_TABLE) -> dict[str, ParamRule]:
    """name -> its single matching row; ValueError listing every unmatched / multiply matched name."""
    out: dict[str, ParamRule] = {}
    unmatched, multiple = [], []
    for name, _ in named_params:
        rows = [r for r in table if r.matches(name)]
        if len(rows) == 1:
            out[name] = rows[0]
        elif not rows:
            unmatched.append(name)
        else:
            multiple.append(f"{name} ({' | '.join(r.pattern for r in rows)})")
    if unmatched or multiple:
        parts = []
        if unmatched:
            parts.append(f"no row for {', '.join(unmatched)}")
        if multiple:
            parts.append(f"several rows for {', '.join(multiple)}")
        raise ValueError(f"optim.PARAM_TABLE: {'; '.join(parts)}")
    return out


# --------------------------------------------------------------------------- the bundle
class Optimizers:
    """Muon + two AdamWs over one model, with the gradient communication; built by `build_optimizers`."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, table: tuple[ParamRule, ...] = PARAM_TABLE):
        if not 1 <= cfg.muon_backend_steps <= len(PE_COEFFS):
            raise ConfigError(f"train.muon_backend_steps: Polar Express has {len(PE_COEFFS)} tuned steps, "
                              f"got {cfg.muon_backend_steps}")
        named = list(model.named_parameters())
        self.assignment = assign_params(named, table)
        self.cfg = cfg
        groups: dict[str, list[tuple[str, nn.Parameter]]] = defaultdict(list)
        for name, p in named:
            groups[self.assignment[name].optimizer].append((name, p))
        for name, p in groups["muon"]:
            assert p.ndim == 3, f"{name}: Muon rows must be banks [n, rows, cols], got {tuple(p.shape)}"
        self.names = {opt: [n for n, _ in groups[opt]] for opt in OPTIMIZER_NAMES}
        policy = policy_for(named[0][1].device if named else "cpu")
        # The record's fused AdamW comes with its bf16 policy (torch has a fused CPU AdamW for emulation);
        # the fp32 CPU policy keeps the default foreach kernel, the golden reference.
        fused = True if policy.autocast_dtype else None
        # Compiling fuses the bf16 Polar Express chain (the record compiles it too); a policy that does not
        # compile by default (CPU) keeps the eager fp32 reference even with compile=on.
        self.muon = Muon([p for _, p in groups["muon"]], lr=cfg.matrix_lr, momentum=cfg.muon_momentum,
                         weight_decay=cfg.muon_wd, backend_steps=cfg.muon_backend_steps,
                         row_normalize=cfg.muon_row_normalize,
                         orthogonalize=policy.compile(zeropower_polar_express)
                         if policy.compile_auto and cfg.compile != "off" else zeropower_polar_express)
        self.adam_embed = self._adam(groups["adam_embed"], "adam_embed", fused)
        self.adam_scalar = self._adam(groups["adam_scalar"], "adam_scalar", fused)
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            k: v for k, v in (("adam_embed", self.adam_embed), ("muon", self.muon), ("adam_scalar", self.adam_scalar))
            if v is not None
        }
        self.replicated = [p for opt in ("adam_embed", "adam_scalar") for _, p in groups[opt]]
        self.lr_scale = 1.0
        self.muon_momentum = cfg.muon_momentum

    def _adam(self, pairs, opt_name: str, fused: bool | None) -> torch.optim.AdamW | None:
        if not pairs:
            return None
        rule = self.assignment[pairs[0][0]]
        # All rows of one Adam share lr/wd/betas fields; a table that mixed them would need several groups.
        assert all(self.assignment[n].lr_field == rule.lr_field and self.assignment[n].wd_field == rule.wd_field
                   for n, _ in pairs), f"{opt_name}: rows disagree on lr/wd fields"
        lr = getattr(self.cfg, rule.lr_field)
        betas = tuple(getattr(self.cfg, f) for f in rule.betas)
        return torch.optim.AdamW([{"params": [p for _, p in pairs], "lr": lr, "base_lr": lr}], lr=lr,
                                 betas=betas, eps=self.cfg.adam_eps, weight_decay=getattr(self.cfg, rule.wd_field),
                                 fused=fused)

    # -- the step -----------------------------------------------------------------------------------
    @torch.no_grad()
    def all_reduce_replicated_grads(self) -> None:
        """Average the replicated gradients over ranks: small ones packed per dtype, large ones alone."""
        comm = self.muon.comm
        if not comm.enabled:
            return
        pending, packs = [], defaultdict(list)
        for p in self.replicated:
            if p.grad is None:
                continue
            if p.grad.numel() <= PACKED_GRAD_MAX_NUMEL:
                packs[(p.grad.device, p.grad.dtype)].append(p.grad)
            else:
                pending.append(comm.all_reduce_avg(p.grad))
        unpack = []
        for grads in packs.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            pending.append(comm.all_reduce_avg(flat))
            unpack.append((flat, grads))
        for w in pending:
            w.wait()
        for flat, grads in unpack:
            for g, part in zip(grads, flat.split([g.numel() for g in grads])):
                g.copy_(part.view_as(g))

    def step(self) -> None:
        """Communicate gradients (bank reduce-scatters first, so they overlap the rest), then step all."""
        self.muon.launch_reduce_scatters()
        self.all_reduce_replicated_grads()
        for opt in (self.adam_embed, self.adam_scalar):
            if opt is not None:
                opt.step()
        self.muon.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def set_lr_scale(self, scale: float) -> None:
        """lr = base_lr · scale for every group of every optimizer (LR schedule x re-warm)."""
        self.lr_scale = float(scale)
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * self.lr_scale

    def set_muon_momentum(self, momentum: float) -> None:
        self.muon_momentum = float(momentum)
        for group in self.muon.param_groups:
            group["momentum"] = self.muon_momentum

    # -- checkpointing ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers (loadable with weights_only=True). Collective at world size > 1."""
        return {"optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
                "lr_scale": self.lr_scale, "muon_momentum": self.muon_momentum}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        saved = sd["optimizers"]
        if set(saved) != set(self.optimizers):
            raise ValueError(f"optimizer state has {sorted(saved)}, this model needs {sorted(self.optimizers)}")
        for k, opt in self.optimizers.items():
            state = saved[k]
            # Keep this machine's kernel choice (fused on CUDA, default on CPU): a GPU checkpoint must load on CPU.
            groups = []
            for cur, old in zip(opt.param_groups, state["param_groups"]):
                old = dict(old)
                for key in ("fused", "foreach", "capturable"):
                    if key in cur:
                        old[key] = cur[key]
                groups.append(old)
            opt.load_state_dict({"state": state["state"], "param_groups": groups})
        self.lr_scale = float(sd["lr_scale"])
        self.set_muon_momentum(sd["muon_momentum"])

    def table(self) -> list[dict[str, Any]]:
        """One row per parameter: name, optimizer, base lr, weight decay (frozen: lr = wd = 0)."""
        rows = []
        for name, rule in self.assignment.items():
            lr = getattr(self.cfg, rule.lr_field) if rule.lr_field else 0.0
            wd = getattr(self.cfg, rule.wd_field) if rule.wd_field else 0.0
            rows.append({"name": name, "optimizer": rule.optimizer, "lr": lr, "wd": wd, "pattern": rule.pattern})
        return rows


def build_optimizers(model: nn.Module, cfg: TrainConfig) -> Optimizers:
    """The record's optimizer stack for `model` (every parameter must match exactly one PARAM_TABLE row)."""
    return Optimizers(model, cfg)
