"""The training loop: the record's wallclock-driven schedule around Muon + AdamW, EMA and a GPTQ reserve.

One step, as the record runs it (every rank the same code; world size 1 is the same path):

    progress p = elapsed / budget (or step / iterations without a cap), computed before the step
    p -> sequence-length stage (a switch starts a linear LR re-warm), depth recurrence on at p >= 0.35
    lr scale = warmdown(p) x re-warm; Muon momentum warms up 0.92 -> 0.97 by step
    grad_accum micro-steps: packed row -> mean CE -> (loss / grad_accum).backward()
    clip_grad_norm_ on this rank's LOCAL gradients (the record clips before any communication)
    optimizers.step()  (all gradient communication happens in there; no DDP wrapper)
    EMA(0.9965) of every weight, fp32, after each step (optionally warmed up: decay min(d, (1+k)/(10+k)))
    stop when step == iterations or the timed train time reaches the budget (MAX over ranks)

The budget is `max_wallclock_seconds - gptq_reserve_seconds`: the reserve is spent right after the
loop, still on the clock, collecting the GPTQ Hessians from training data with the EMA weights
(the seed did this after its pre-quant eval, i.e. after the budget; pgolf does not). Validation
and checkpoint writes pause the clock. A compile warmup (warmup_steps > 0 while compiling) runs
before the clock starts and is then undone: initial weights and optimizer state restored, loader
recreated, so it only pre-builds the graphs.

A NaN/inf loss stops training before the optimizer step and saves checkpoint.pt (the last finite
state) for inspection. `checkpoint.pt` (`pgolf.train_state`; not kept by the packed record) holds everything
a resume needs (weights, EMA, optimizer
moments, step, elapsed seconds, loader cursor, re-warm state, RNG states and the config): a run
stopped at step k and resumed ends bit-identical to an uninterrupted one on CPU.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from pgolf import schedule
from pgolf.checkpoint import cpu_state_dict, save_model, seed_everything
from pgolf.config import RunConfig, TrainConfig
from pgolf.data import load_val, manifest_sha256, train_files
from pgolf.device import policy_for
from pgolf.distributed import all_reduce_max, all_reduce_sum, barrier, init_distributed, is_main, sync
from pgolf.errors import ConfigError, TrainingError
from pgolf.evaluate import eval_packed
from pgolf.loader import CU_BUCKET, CalibrationSampler, DocumentPackingLoader
from pgolf.model import GPT
from pgolf.optim import build_optimizers
from pgolf.quant.calibrate import collect_hessians, save_calibration
from pgolf.rundir import RunDir
from pgolf.runlog import RunLog


# --------------------------------------------------------------------------- batch geometry
def grad_accum_steps(cfg: TrainConfig, world_size: int) -> int:
    """Micro-steps per optimizer step: the config's, else 8 // world_size (at least 1) like the record."""
    return cfg.grad_accum_steps or max(1, 8 // world_size)


def local_micro_tokens(cfg: TrainConfig, world_size: int, grad_accum: int) -> int:
    """Tokens per rank per micro-step; every stage length must divide it (as the seed checks)."""
    denom = world_size * grad_accum
    if cfg.train_batch_tokens % denom:
        raise ConfigError(f"train.train_batch_tokens: {cfg.train_batch_tokens} is not divisible by "
                          f"world_size x grad_accum_steps = {world_size} x {grad_accum}")
    local_tokens = cfg.train_batch_tokens // denom
    bad = sorted({n for n, _ in cfg.seq_len_stages if local_tokens % n})
    if bad:
        raise ConfigError(f"train.seq_len_stages: stage lengths {bad} do not divide the local micro-batch of "
                          f"{local_tokens} tokens (train_batch_tokens {cfg.train_batch_tokens} / "
                          f"({world_size} ranks x {grad_accum} micro-steps))")
    return local_tokens


# --------------------------------------------------------------------------- pieces of a step
def forward_backward(forward: Callable, loader: DocumentPackingLoader, seq_len: int, grad_accum: int,
                     device: torch.device) -> torch.Tensor:
    """Accumulate the gradients of one optimizer step; returns the mean micro-step loss (detached).

    The forward autocasts as `device`'s policy says (the active one, possibly emulated)."""
    total = torch.zeros((), device=device)
    policy = policy_for(device)
    for _ in range(grad_accum):
        x, y, cu_seqlens, max_seqlen = loader.next_batch(seq_len)
        with policy.autocast():
            loss = forward(x, y, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
        (loss / grad_accum).backward()
        total += loss.detach().float()
    return total / grad_accum


def apply_update(optimizers, params: list[torch.nn.Parameter], clip_norm: float) -> None:
    """Clip the local gradients (record: before communication), step every optimizer, clear grads."""
    if clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, clip_norm)
    optimizers.step()
    optimizers.zero_grad(set_to_none=True)


class EMA:
    """fp32 shadow of the full state dict: shadow = decay * shadow + (1 - decay) * weights, every step.

    `copy_to` rounds into each parameter's own dtype: a bf16 embedding (the record's dtype rule) gets
    the bf16-rounded average, as the record's `.to(dtype)` on copy-back does."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self._live = model.state_dict(keep_vars=True)
        self.shadow = {k: t.detach().float().clone() for k, t in self._live.items()}

    @torch.no_grad()
    def update(self, step: int | None = None) -> None:
        # Warm-up (given the 0-based step): early weights leave the average fast, so a short run's EMA is
        # not dominated by its random init; from the step where the ramp passes `decay` on, nothing changes.
        d = self.decay if step is None else min(self.decay, (1 + step) / (10 + step))
        for k, t in self._live.items():
            self.shadow[k].mul_(d).add_(t.detach().float(), alpha=1.0 - d)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.shadow.items()}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        for k, v in self.shadow.items():
            v.copy_(sd[k])

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        model.load_state_dict({k: v.to(self._live[k].dtype) for k, v in self.shadow.items()}, strict=True)


# --------------------------------------------------------------------------- run state
class _Clock:
    """Timed training seconds; pauses (validation, checkpoints) are excluded, as in the record."""

    def __init__(self, device: torch.device, elapsed_s: float = 0.0):
        self.device = device
        self.base_s = elapsed_s
        self.t0 = None

    def start(self) -> None:
        sync(self.device)
        self.t0 = time.perf_counter()

    def elapsed_s(self) -> float:
        return self.base_s + (time.perf_counter() - self.t0 if self.t0 is not None else 0.0)

    @contextlib.contextmanager
    def paused(self):
        sync(self.device)
        self.base_s, self.t0 = self.elapsed_s(), None
        try:
            yield
        finally:
            self.start()


# --------------------------------------------------------------------------- train
def train(cfg: RunConfig, data_dir, run_dir, resume: bool = False, *,
          stop_after_steps: int | None = None, checkpoints: bool = True) -> dict[str, Any]:
    """Train `cfg` on DATA_DIR's shards into RUN_DIR; returns the summary (also merged into report.json).

    The run directory must hold no earlier results unless `resume` (see `clear_results`).

    `stop_after_steps` ends the loop after that many steps with checkpoint.pt written and none of
    the end-of-run work, as if the process had been killed right after a checkpoint: the run
    continues with `resume=True`. (It is the seed's FORCE_STOP_STEP without the schedule change.)

    `checkpoints=False` (the packed record) keeps no checkpoint.pt, so it cannot resume or stop early.
    """
    run_dir = RunDir(run_dir)
    if not checkpoints and (resume or stop_after_steps is not None):
        raise ConfigError("resume and stop_after_steps need checkpoints")
    # By name: a packed record trains without checkpoints, and its file leaves the module out.
    state_io = importlib.import_module("pgolf.train_state") if checkpoints else None
    saved = state_io.read_for_resume(cfg, run_dir) if resume else None
    run = _Run(cfg, Path(data_dir), run_dir, resume, state_io)
    if saved is not None:
        state_io.restore(run, saved)
    tc = cfg.train
    run.clock.start()
    start_step, start_elapsed_s = run.step, run.clock.elapsed_s()
    while run.step < tc.iterations:
        seq_len, lr_scale = run.apply_schedule()
        run.train_step(seq_len)
        elapsed_s = run.clock.elapsed_s()
        # Every rank stops at the same step: the first rank over the budget decides (MAX).
        over = torch.tensor([float(schedule.wallclock_reached(elapsed_s, tc))], device=run.dev)
        if math.isfinite(run.budget_s) and all_reduce_max(over).item() > 0:
            run.stopped_by = "wallclock"
        step = run.step
        last = run.stopped_by == "wallclock" or step >= tc.iterations or step == stop_after_steps
        if step <= 5 or (tc.train_log_every > 0 and step % tc.train_log_every == 0) or last:
            tokens_per_s = (step - start_step) * tc.train_batch_tokens / max(elapsed_s - start_elapsed_s, 1e-9)
            run.log.event("step", step=step, loss=run.last_loss, lr_scale=lr_scale, seq_len=seq_len,
                          looping=run.model.looping, tokens_per_s=tokens_per_s, elapsed_s=elapsed_s)
        if tc.val_loss_every > 0 and step % tc.val_loss_every == 0 and not last:
            with run.clock.paused():
                run.validate("periodic")
        if (tc.checkpoint_every > 0 and step % tc.checkpoint_every == 0) or step == stop_after_steps:
            with run.clock.paused():
                run.checkpoint(run.loader.state())
        if step == stop_after_steps:
            run.log.event("stopped", step=step, reason="stop_after_steps")
            run.log.close()
            return {"stopped_at_step": step, "losses": run.losses, "checkpoint": str(run.ckpt_path)}
        if run.stopped_by == "wallclock":
            run.log.event("wallclock_stop", step=step, elapsed_s=elapsed_s, budget_s=run.budget_s)
            break
    return run.finish()


class _Run:
    """One training run's state: model, optimizers, loader, EMA, schedule state, clock and logs."""

    def __init__(self, cfg: RunConfig, data_dir: Path, run_dir: RunDir, resume: bool, state_io=None):
        t_setup = time.perf_counter()
        self.cfg, self.data_dir, self.run_dir = cfg, data_dir, run_dir
        self.state_io = state_io  # pgolf.train_state, or None: no checkpoints
        tc = cfg.train
        self.dist = init_distributed()
        self.dev = self.dist.device
        self.grad_accum = grad_accum_steps(tc, self.dist.world_size)
        self.local_tokens = local_micro_tokens(tc, self.dist.world_size, self.grad_accum)
        self.budget_s = schedule.training_budget_s(tc)
        self.ckpt_path = run_dir.checkpoint
        barrier()
        self.log = RunLog(run_dir.train_log)
        run_dir.write_config(cfg)
        # The device policy (the active one: `PGOLF_EMULATE=cuda` runs CUDA's on CPU) decides dtypes,
        # autocast, TF32 and compile; it stays the process's policy, which attention follows.
        self.policy = policy = policy_for(self.dev)
        policy.activate()
        policy.apply_matmul_precision()

        seed_everything(tc.seed)
        self.files = train_files(data_dir)
        self.val = load_val(data_dir, include_tail=cfg.eval.include_tail, val_docs_limit=cfg.eval.val_docs_limit,
                            seq_len=cfg.eval.eval_seq_len)
        # Cast before the optimizers and the EMA exist: their state takes the parameters' dtypes.
        self.model = policy.cast_model(GPT(cfg.model).to(self.dev))
        self.opt = build_optimizers(self.model, tc)
        self.clip_params = [p for p in self.model.parameters() if p.requires_grad]
        compiling = policy.should_compile(tc.compile)
        # Compiled at the call site; the eager model stays the one evaluated, calibrated and saved.
        self.forward = policy.compile(self.model) if compiling else self.model
        self.seq_sched = schedule.SeqLenSchedule.from_config(tc)
        self.model_params = sum(p.numel() for p in self.model.parameters())
        self.log.event("setup", model_params=self.model_params, world_size=self.dist.world_size,
                       grad_accum_steps=self.grad_accum, local_microbatch_tokens=self.local_tokens,
                       train_seq_schedule=schedule.format_seq_schedule(tc.seq_len_stages),
                       budget_s=self.budget_s if math.isfinite(self.budget_s) else None,
                       train_shards=len(self.files), val_targets=self.val.num_targets, device=str(self.dev),
                       compile=compiling, resume=resume)
        self.warmup_s = 0.0
        if compiling and tc.warmup_steps > 0:  # also on resume: the checkpoint is loaded after it
            self.warmup_s = _compile_warmup(cfg, self.model, self.forward, self.opt, self.clip_params,
                                            self._new_loader(), self.grad_accum, self.dev, self.log,
                                            carry_muon_momentum=self.dist.world_size > 1)
        self.loader = self._new_loader()
        self.ema = EMA(self.model, tc.ema_decay) if tc.ema_decay > 0 else None
        self.rewarm = schedule.ReWarm(tc.seq_change_warmup_steps)
        self.step, self.active_seq_len, self.last_loss = 0, None, None
        self.losses: list[float] = []
        self.stopped_by = "iterations"
        self.clock = _Clock(self.dev)
        self.setup_s = time.perf_counter() - t_setup

    def _new_loader(self) -> DocumentPackingLoader:
        return DocumentPackingLoader(self.files, self.dist.rank, self.dist.world_size, self.local_tokens, self.dev)

    def checkpoint(self, loader_state: dict, weights: dict | None = None) -> bool:
        """Write checkpoint.pt when the run keeps checkpoints; whether it did."""
        if self.state_io is not None:
            self.state_io.write(self, loader_state, weights)
        return self.state_io is not None

    # -- one step -------------------------------------------------------------------------------
    def apply_schedule(self) -> tuple[int, float]:
        """Progress -> stage (logging switches and starting the re-warm), looping, LR and momentum."""
        tc, step = self.cfg.train, self.step
        p = schedule.progress(self.clock.elapsed_s(), step, tc)
        seq_len = self.seq_sched.lookup(p)
        if seq_len != self.active_seq_len:
            self.active_seq_len = seq_len
            self.log.event("stage", step=step, seq_len=seq_len, progress=p)
            if self.rewarm.start(step):
                self.log.event("rewarm", step=step, steps=self.rewarm.steps, seq_len=seq_len)
        if self.cfg.model.num_loops > 0 and not self.model.looping and schedule.looping_active(p, tc.enable_looping_at):
            self.model.set_looping(True)
            encoder, decoder = self.model.layer_schedule()
            self.log.event("looping", step=step, progress=p, encoder=encoder, decoder=decoder)
        lr_scale = schedule.lr_scale(p, step, tc, self.rewarm)
        self.opt.set_lr_scale(lr_scale)
        self.opt.set_muon_momentum(schedule.muon_momentum(step, tc.muon_momentum_warmup_start, tc.muon_momentum,
                                                          tc.muon_momentum_warmup_steps))
        return seq_len, lr_scale

    def train_step(self, seq_len: int) -> None:
        """Gradients, the NaN guard, the update and the EMA of one optimizer step."""
        loader_before = self.loader.state()
        loss = forward_backward(self.forward, self.loader, seq_len, self.grad_accum, self.dev)
        # The mean over ranks is what a single process with the same global batch would report,
        # and a non-finite loss on any rank stops every rank at the same step.
        loss_value = all_reduce_sum(loss.reshape(1)).item() / self.dist.world_size
        if not math.isfinite(loss_value):
            self.opt.zero_grad(set_to_none=True)
            with self.clock.paused():
                saved = self.checkpoint(loader_before)
            self.log.event("nan", step=self.step + 1, loss=loss_value)
            raise TrainingError(f"non-finite training loss ({loss_value}) at step {self.step + 1}"
                                + (f"; the state after step {self.step} (before the bad update) is saved in "
                                   f"{self.ckpt_path}" if saved else ""))
        apply_update(self.opt, self.clip_params, self.cfg.train.grad_clip_norm)
        if self.ema is not None:
            self.ema.update(self.step if self.cfg.train.ema_warmup else None)
        self.step += 1
        self.losses.append(loss_value)
        self.last_loss = loss_value

    def validate(self, tag: str) -> dict[str, float]:
        t = time.perf_counter()
        meter = eval_packed(self.model, self.val, self.cfg.eval)
        rec = {"val_loss": meter.loss(), "val_bpb": meter.bpb(), "seconds": time.perf_counter() - t}
        self.log.event("val", tag=tag, step=self.step, **rec)
        return rec

    # -- the end --------------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """EMA, Hessians inside the reserve, files, pre/post-EMA validation, report."""
        cfg, tc, model = self.cfg, self.cfg.train, self.model
        train_s = self.clock.elapsed_s()
        # The GPTQ reserve: EMA weights, then Hessians from training data, still on the clock.
        raw_weights = cpu_state_dict(model)
        if self.ema is not None:
            self.ema.copy_to(model)
            self.log.event("ema", decay=tc.ema_decay)
        model.set_looping(cfg.model.num_loops > 0)  # the final model is evaluated and quantized looped
        calib = _calibrate(cfg, model, self.files, self.dist.rank, self.dist.world_size, self.local_tokens)
        total_s = train_s + calib["seconds"]
        self.log.event("calibration", num_hessians=len(calib["hessians"]), seconds=calib["seconds"],
                       train_s=train_s, total_s=total_s,
                       within_wallclock=tc.max_wallclock_seconds <= 0 or total_s <= tc.max_wallclock_seconds)
        if is_main():
            save_calibration(self.run_dir.calibration, calib["hessians"], calib["act_rms"], calib["seconds"])
            save_model(self.run_dir.final_model, model)
        self.clock = _Clock(self.dev, train_s)  # the checkpoint records the loop's time, not the calibration
        self.checkpoint(self.loader.state(), weights=raw_weights)

        # Validation, off the clock: post-EMA (the result), then the raw weights.
        val_post = self.validate("post_ema")
        val_pre, val_s = val_post, val_post["seconds"]
        if self.ema is not None:
            ema_weights = cpu_state_dict(model)
            model.load_state_dict(raw_weights)
            val_pre = self.validate("pre_ema")
            model.load_state_dict(ema_weights)
            val_s += val_pre["seconds"]
        summary = {
            "model_params": self.model_params, "steps": self.step, "train_seconds": train_s,
            # over the whole run: a resumed run's step and elapsed time both include earlier sessions
            "tokens_per_second": self.step * tc.train_batch_tokens / max(train_s, 1e-9),
            "val_loss_prequant": val_post["val_loss"], "val_bpb_prequant": val_post["val_bpb"],
            "val_bpb_pre_ema": val_pre["val_bpb"],
            "val_loss_pre_ema": val_pre["val_loss"], "calibration_seconds": calib["seconds"],
            "final_train_loss": self.last_loss, "stopped_by": self.stopped_by,
            "data_manifest_sha256": manifest_sha256(self.data_dir), "data_dir": str(self.data_dir.resolve()),
            "phase_seconds": {"train_setup": self.setup_s, "compile_warmup": self.warmup_s, "train": train_s,
                              "calibration": calib["seconds"], "train_val": val_s},
            "config": cfg.to_dict(),
        }
        self.run_dir.update_report(**summary)
        self.log.event("done", **{k: v for k, v in summary.items() if k not in ("config", "phase_seconds")})
        self.log.close()
        barrier()
        return {**summary, "losses": self.losses}


def warmup_shapes(cfg: RunConfig) -> list[tuple[int, bool]]:
    """(stage length, looping) pairs the run will meet, in schedule order (the seed's "auto" mode).

    A stage gets the plain shape if it starts before looping switches on and the looped shape if
    it ends after; without depth recurrence every stage is plain.
    """
    tc, shapes, start = cfg.train, [], 0.0
    for seq_len, until in tc.seq_len_stages:
        modes = [False] if cfg.model.num_loops == 0 else (
            [False] * (start < tc.enable_looping_at) + [True] * (until > tc.enable_looping_at))
        for looped in modes or [False]:
            if (seq_len, looped) not in shapes:
                shapes.append((seq_len, looped))
        start = until
    return shapes


def warmup_variants(cfg: RunConfig, row_tokens: int) -> list[tuple[int, bool, torch.Tensor]]:
    """(stage length, looping, cu_seqlens) of every graph the compile warmup builds, in order.

    For each (stage length, looping) shape, cu_seqlens padded to each bucket size (64, 128, 192,
    256 entries) that can hold the boundaries of a row cut at that length, as the seed warms up.
    """
    out = []
    for seq_len, looped in warmup_shapes(cfg):
        boundaries = list(range(0, row_tokens, seq_len)) + [row_tokens]
        for bucket in (CU_BUCKET * k for k in range(1, 5)):
            if bucket >= len(boundaries):
                cu = torch.full((bucket,), row_tokens, dtype=torch.int32)
                cu[: len(boundaries)] = torch.tensor(boundaries, dtype=torch.int32)
                out.append((seq_len, looped, cu))
    return out


def _compile_warmup(cfg: RunConfig, model, forward, opt, clip_params, loader, grad_accum: int,
                    dev: torch.device, log: RunLog, *, carry_muon_momentum: bool = False) -> float:
    """Build the compiled graphs before the clock starts, then undo every weight and optimizer change.

    As the seed: one forward/backward per `warmup_variants` graph, so the timed loop does not
    recompile when a batch's document count crosses a bucket; then warmup_steps real steps plain and
    warmup_steps looped at the first stage's cap, each at the base LR and the step's scheduled Muon
    momentum. `carry_muon_momentum` keeps Muon's momentum from those steps through the restore: the
    seed's sharded Muon (world size > 1) holds it outside its optimizer state, so its restore misses
    it; at world size 1 the seed resets it.
    """
    tc = cfg.train
    t = time.perf_counter()
    initial_weights = cpu_state_dict(model)
    initial_opt = opt.state_dict()
    shapes = warmup_shapes(cfg)
    x, y, _, _ = loader.next_batch(tc.seq_len_stages[0][0])
    policy = policy_for(dev)
    for seq_len, looped, cu in warmup_variants(cfg, x.shape[1]):
        model.set_looping(looped)
        with policy.autocast():
            loss = forward(x, y, cu_seqlens=cu.to(dev), max_seqlen=seq_len)
        loss.backward()
        opt.zero_grad(set_to_none=True)
    first_seq_len = tc.seq_len_stages[0][0]
    opt.set_lr_scale(1.0)
    for looped in (False, True) if cfg.model.num_loops > 0 else (False,):
        model.set_looping(looped)
        for i in range(tc.warmup_steps):
            opt.set_muon_momentum(schedule.muon_momentum(i, tc.muon_momentum_warmup_start, tc.muon_momentum,
                                                         tc.muon_momentum_warmup_steps))
            forward_backward(forward, loader, first_seq_len, grad_accum, dev)
            apply_update(opt, clip_params, tc.grad_clip_norm)
    carried = {p: st["momentum_buffer"] for p, st in opt.muon.state.items()} if carry_muon_momentum else {}
    model.set_looping(False)
    model.load_state_dict({k: v.to(dev) for k, v in initial_weights.items()}, strict=True)
    opt.load_state_dict(initial_opt)
    for p, buf in carried.items():
        opt.muon.state[p]["momentum_buffer"] = buf
    opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - t
    log.event("compile_warmup", shapes=[f"{n}x{'loop' if lp else 'plain'}" for n, lp in shapes],
              steps=tc.warmup_steps, seconds=seconds)
    return seconds


def _calibrate(cfg: RunConfig, model, files, rank: int, world_size: int, local_tokens: int) -> dict[str, Any]:
    """GPTQ Hessians and activation RMS from random training windows (each rank its own shards)."""
    t = time.perf_counter()
    seq_len = cfg.quant.calibration_seq_len or cfg.train.max_seq_len
    # The record's calibration batch is one micro-batch worth of tokens: 32 windows of 3072 per rank.
    num_windows = max(1, local_tokens // seq_len)
    sampler = CalibrationSampler(files, rank, world_size, seq_len)
    batches = (sampler.next_batch(num_windows) for _ in range(cfg.quant.calibration_batches))
    hessians, act_rms = collect_hessians(model, batches)
    return {"hessians": hessians, "act_rms": act_rms, "seconds": time.perf_counter() - t}


def clear_results(run_dir: RunDir, resume: bool, overwrite: bool) -> None:
    """Refuse to train over earlier results unless asked; `overwrite` removes only pgolf's own files."""
    found = [p.name for p in run_dir.result_files() if p.exists()]
    if resume:
        if overwrite:
            raise ConfigError("--resume and --overwrite contradict each other; pick one")
        return
    if found and not overwrite:
        raise ConfigError(f"{run_dir.path}: holds results of an earlier run ({', '.join(found)}); pass --resume to "
                          f"continue it or --overwrite to start over")
    if found and is_main():
        for p in run_dir.result_files():
            p.unlink(missing_ok=True)
    barrier()
