"""Training schedules as pure functions of progress, the fraction of the training budget used so far.

The record drives everything by wallclock, not step count: progress p = elapsed / (cap − GPTQ reserve),
computed before each step, sets the LR warmdown, the sequence-length stage and the switch-on of depth
recurrence (with no wallclock cap, p = step / iterations). Only the Muon momentum warmup and the LR
re-warm after a stage change count steps. Nothing here touches a model or a clock; the training loop
asks, and these answer.

    p:          0 ──── 0.10 ──────── 0.15 ──── 0.35 ──────── 0.70 ──────── 0.915 ──── 1
    seq cap:    1024 ──┤ 2048 ──────────────────────────────┤ 3072 ─────────────────────
    lr_mul:     1 ───────────────────┤ (1−p)/0.85 linear ──────────────────┤ 0.1 floor ─
    looping:    off ─────────────────────────┤ on ──────────────────────────────────────
    LR re-warm: 1/32, 2/32, ... 32/32 over the 32 steps after each stage switch (step > 0)

The final LR scale of a step is lr_multiplier(p) · ReWarm.factor(step) (`lr_scale`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pgolf.config import TrainConfig
from pgolf.errors import ConfigError


# --------------------------------------------------------------------------- progress and budget
def training_budget_s(cfg: TrainConfig) -> float:
    """Seconds the training loop may run: the wallclock cap minus the GPTQ reserve (inf without a cap)."""
    if cfg.max_wallclock_seconds <= 0:
        return math.inf
    budget_s = cfg.max_wallclock_seconds - cfg.gptq_reserve_seconds
    if budget_s <= 0:
        raise ConfigError(f"train.gptq_reserve_seconds: reserve {cfg.gptq_reserve_seconds} s leaves no training "
                          f"time under max_wallclock_seconds {cfg.max_wallclock_seconds}")
    return budget_s


def progress(elapsed_s: float, step: int, cfg: TrainConfig) -> float:
    """Fraction of training done, in [0, 1]: wallclock-based under a cap, step-based without one."""
    budget_s = training_budget_s(cfg)
    raw = step / cfg.iterations if math.isinf(budget_s) else elapsed_s / budget_s
    return min(max(raw, 0.0), 1.0)


def wallclock_reached(elapsed_s: float, cfg: TrainConfig) -> bool:
    """True once the timed training time has used the budget (the loop then stops after this step)."""
    return elapsed_s >= training_budget_s(cfg)


# --------------------------------------------------------------------------- learning rate and momentum
def lr_multiplier(progress: float, warmdown_frac: float, min_lr: float) -> float:
    """1 until the warmdown starts at 1 − warmdown_frac, then linear to 0, floored at min_lr."""
    if warmdown_frac <= 0:
        return 1.0
    if progress < 1.0 - warmdown_frac:
        return 1.0
    return max((1.0 - progress) / warmdown_frac, min_lr)


def muon_momentum(step: int, start: float, end: float, warmup_steps: int) -> float:
    """Linear from `start` at step 0 to `end` at `warmup_steps`, then constant."""
    if warmup_steps <= 0:
        return end
    frac = min(max(step / warmup_steps, 0.0), 1.0)
    return (1.0 - frac) * start + frac * end


@dataclass
class ReWarm:
    """Linear LR re-warm after a sequence-length stage switch, as the record does.

    `start(step)` at the switch records s0 = step (not at step 0, where there is nothing to re-warm
    from, and not when steps is 0). `factor(step)` is then min(max((step − s0 + 1)/steps, 0), 1):
    1/steps on the switch step itself, reaching 1 on step s0 + steps − 1, after which it is cleared.
    A new switch while re-warming restarts from 1/steps.
    """
    steps: int
    start_step: int | None = None

    def start(self, step: int) -> bool:
        """Begin a re-warm at `step`; returns whether one was started."""
        if self.steps <= 0 or step <= 0:
            return False
        self.start_step = step
        return True

    @property
    def active(self) -> bool:
        return self.start_step is not None

    def factor(self, step: int) -> float:
        if self.start_step is None:
            return 1.0
        m = min(max((step - self.start_step + 1) / self.steps, 0.0), 1.0)
        if m >= 1.0:
            self.start_step = None
        return m

    def state(self) -> dict[str, Any]:
        return {"steps": self.steps, "start_step": self.start_step}

    def load_state(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.start_step = None if state["start_step"] is None else int(state["start_step"])


def lr_scale(progress: float, step: int, cfg: TrainConfig, rewarm: ReWarm) -> float:
    """The multiplier for every group's base lr this step: warmdown times re-warm."""
    return lr_multiplier(progress, cfg.warmdown_frac, cfg.min_lr) * rewarm.factor(step)


# --------------------------------------------------------------------------- stages and switches
@dataclass(frozen=True)
class SeqLenSchedule:
    """Segment-cap stages `((seq_len_tokens, until_progress), ...)`, ascending in progress.

    `lookup(p)` returns the first stage with p <= its threshold, so a threshold is inclusive: the seed
    trains at 1024 through p = 0.100 and switches to 2048 on the first step with p > 0.1. Past the
    last threshold the last stage holds.
    """
    stages: tuple[tuple[int, float], ...]

    def __post_init__(self) -> None:
        stages = tuple((int(n), float(f)) for n, f in self.stages)
        assert stages, "need at least one stage"
        assert all(n > 0 for n, _ in stages), f"stage lengths must be > 0: {stages}"
        assert [f for _, f in stages] == sorted(f for _, f in stages), f"thresholds must ascend: {stages}"
        object.__setattr__(self, "stages", stages)

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> "SeqLenSchedule":
        return cls(cfg.seq_len_stages)

    def lookup(self, progress: float) -> int:
        for seq_len_tokens, until in self.stages:
            if progress <= until:
                return seq_len_tokens
        return self.stages[-1][0]

    @property
    def max_seq_len(self) -> int:
        return max(n for n, _ in self.stages)


def looping_active(progress: float, enable_at: float) -> bool:
    """Depth recurrence is on from the first step with progress >= enable_at (it never switches off)."""
    return progress >= enable_at


# --------------------------------------------------------------------------- the seed's string forms
def format_seq_schedule(stages: tuple[tuple[int, float], ...]) -> str:
    """The seed's log form of the stages ('1024@0.100,...'); `envknobs.parse_seq_schedule` reads it back."""
    return ",".join(f"{n}@{p:.3f}" for n, p in stages)
