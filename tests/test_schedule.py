"""Schedules at their boundaries: warmdown knee and floor, stage switches, re-warm, momentum, progress."""

from __future__ import annotations

import math

import pytest

from pgolf.config import TrainConfig, load_preset
from pgolf.errors import ConfigError
from pgolf.app.envknobs import parse_seq_schedule, parse_short_chunk_steps
from pgolf.schedule import (ReWarm, SeqLenSchedule, format_seq_schedule, looping_active, lr_multiplier, lr_scale,
                            muon_momentum, progress, training_budget_s, wallclock_reached)

SEED = TrainConfig()  # defaults are the seed's logged values


# --------------------------------------------------------------------------- LR warmdown
@pytest.mark.parametrize("p,want", [
    (0.0, 1.0), (0.1, 1.0), (0.149, 1.0),
    (0.15, 1.0),                 # the knee: (1 - 0.15)/0.85 = 1, continuous
    (0.16, 0.84 / 0.85), (0.5, 0.5 / 0.85), (0.7, 0.3 / 0.85),
    (0.9, 0.1 / 0.85),           # still above the floor
    (0.915, 0.1),                # the floor is reached at p = 1 - 0.085
    (0.95, 0.1), (1.0, 0.1),
])
def test_lr_multiplier_seed_table(p, want):
    assert lr_multiplier(p, SEED.warmdown_frac, SEED.min_lr) == pytest.approx(want, abs=1e-12)


def test_lr_multiplier_is_monotone_and_floored():
    vals = [lr_multiplier(i / 1000, 0.85, 0.1) for i in range(1001)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    assert min(vals) == 0.1 and max(vals) == 1.0
    assert sum(v == 0.1 for v in vals) == 86  # p = 0.915 .. 1.000
    assert lr_multiplier(0.99, 0.0, 0.1) == 1.0  # no warmdown
    assert lr_multiplier(1.0, 0.5, 0.0) == 0.0


# --------------------------------------------------------------------------- momentum
@pytest.mark.parametrize("step,want", [(0, 0.92), (750, 0.945), (1500, 0.97), (1499, 0.92 + 0.05 * 1499 / 1500),
                                       (5000, 0.97)])
def test_muon_momentum_warmup(step, want):
    got = muon_momentum(step, SEED.muon_momentum_warmup_start, SEED.muon_momentum, SEED.muon_momentum_warmup_steps)
    assert got == pytest.approx(want, abs=1e-12)


def test_muon_momentum_without_warmup():
    assert muon_momentum(0, 0.5, 0.97, 0) == 0.97


# --------------------------------------------------------------------------- sequence-length stages
@pytest.mark.parametrize("p,want", [
    (0.0, 1024), (0.05, 1024), (0.1, 1024),     # threshold inclusive
    (0.1000001, 2048), (0.35, 2048), (0.7, 2048),
    (0.7000001, 3072), (1.0, 3072), (1.5, 3072),
])
def test_seed_seq_len_stages(p, want):
    sched = SeqLenSchedule.from_config(SEED)
    assert sched.lookup(p) == want
    assert sched.max_seq_len == 3072


def test_tiny_preset_stages():
    sched = SeqLenSchedule.from_config(load_preset("tiny").train)
    assert [sched.lookup(p) for p in (0.0, 0.11, 0.71)] == [32, 64, 128]


def test_single_stage_schedule():
    sched = SeqLenSchedule(((512, 1.0),))
    assert {sched.lookup(i / 10) for i in range(11)} == {512}


# --------------------------------------------------------------------------- re-warm
def test_rewarm_sequence_one_to_thirty_two():
    rw = ReWarm(32)
    assert rw.factor(5) == 1.0 and not rw.active
    assert rw.start(665)
    got = [rw.factor(s) for s in range(665, 665 + 32)]
    assert got == [k / 32 for k in range(1, 33)]
    assert not rw.active  # cleared on the step where it reached 1
    assert rw.factor(700) == 1.0 and rw.factor(10_000) == 1.0


def test_rewarm_not_at_step_zero_or_when_disabled():
    rw = ReWarm(32)
    assert not rw.start(0) and rw.factor(0) == 1.0
    off = ReWarm(0)
    assert not off.start(100) and off.factor(100) == 1.0


def test_rewarm_restart_and_state_roundtrip():
    rw = ReWarm(4)
    rw.start(10)
    assert [rw.factor(s) for s in (10, 11)] == [0.25, 0.5]
    rw.start(12)  # a second switch mid re-warm starts over
    saved = rw.state()
    resumed = ReWarm(1)
    resumed.load_state(saved)
    assert [resumed.factor(s) for s in (12, 13, 14, 15, 16)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert [rw.factor(s) for s in (12, 13, 14, 15, 16)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_simulated_seed_run_switches_and_scales():
    """A step-driven 1000-step run with the seed's schedule: switches, re-warm and lr_scale composed."""
    cfg = TrainConfig(max_wallclock_seconds=0, iterations=1000)
    sched, rw = SeqLenSchedule.from_config(cfg), ReWarm(cfg.seq_change_warmup_steps)
    active, switches, scales, loop_on = None, [], {}, None
    for step in range(cfg.iterations):
        p = progress(0.0, step, cfg)
        seq_len = sched.lookup(p)
        if seq_len != active:
            if active is not None:
                switches.append((step, seq_len))
            active = seq_len
            rw.start(step)
        if loop_on is None and looping_active(p, cfg.enable_looping_at):
            loop_on = step
        scales[step] = lr_scale(p, step, cfg, rw)
    assert switches == [(101, 2048), (701, 3072)]
    assert loop_on == 350
    assert scales[0] == 1.0 and scales[100] == 1.0
    assert scales[101] == pytest.approx(1 / 32) and scales[132] == pytest.approx(1.0)
    assert scales[701] == pytest.approx(lr_multiplier(0.701, 0.85, 0.1) / 32)
    assert scales[732] == pytest.approx(lr_multiplier(0.732, 0.85, 0.1))
    assert scales[999] == pytest.approx(0.1)


# --------------------------------------------------------------------------- looping, progress, budget
def test_looping_switch():
    assert not looping_active(0.349999, 0.35)
    assert looping_active(0.35, 0.35) and looping_active(1.0, 0.35)
    assert looping_active(0.0, 0.0)


def test_progress_wallclock_and_budget():
    assert training_budget_s(SEED) == 596.0
    assert progress(298.0, 7, SEED) == pytest.approx(0.5)
    assert progress(59.6, 0, SEED) == pytest.approx(0.1)
    assert progress(800.0, 7, SEED) == 1.0 and progress(-1.0, 7, SEED) == 0.0
    assert not wallclock_reached(595.9, SEED) and wallclock_reached(596.0, SEED)


def test_progress_by_steps_without_a_cap():
    cfg = load_preset("tiny").train
    assert cfg.max_wallclock_seconds == 0
    assert training_budget_s(cfg) == math.inf and not wallclock_reached(1e9, cfg)
    assert [progress(123.0, s, cfg) for s in (0, 3, 15, 30, 40)] == [0.0, 0.1, 0.5, 1.0, 1.0]


def test_reserve_eating_the_budget_is_a_config_error():
    with pytest.raises(ConfigError, match="train.gptq_reserve_seconds"):
        training_budget_s(TrainConfig(max_wallclock_seconds=4.0, gptq_reserve_seconds=4.0))


# --------------------------------------------------------------------------- the seed's strings
def test_parse_seq_schedule_seed_string():
    stages = parse_seq_schedule("1024@0.100,2048@0.700,3072@1.000")
    assert stages == ((1024, 0.1), (2048, 0.7), (3072, 1.0)) == SEED.seq_len_stages
    assert format_seq_schedule(stages) == "1024@0.100,2048@0.700,3072@1.000"
    assert parse_seq_schedule(format_seq_schedule(stages)) == stages


def test_parse_seq_schedule_sorts_extends_and_defaults():
    assert parse_seq_schedule(" 2048@0.7 , 1024@0.1 ") == ((1024, 0.1), (2048, 0.7), (2048, 1.0))
    assert parse_seq_schedule("", default_seq_len=2048) == ((2048, 1.0),)
    with pytest.raises(ConfigError, match="TRAIN_SEQ_SCHEDULE"):
        parse_seq_schedule("")


@pytest.mark.parametrize("bad", ["1024", "1024@", "x@0.5", "1024@0", "1024@1.5", "0@0.5", "-8@0.5",
                                 "1024@0.1,2048:0.7", "1024.5@0.3"])
def test_parse_seq_schedule_malformed(bad):
    with pytest.raises(ConfigError, match=r"^TRAIN_SEQ_SCHEDULE: ") as e:
        parse_seq_schedule(bad)
    assert "\n" not in str(e.value)


def test_parse_short_chunk_steps():
    assert parse_short_chunk_steps("256:8,2000:24") == ((256, 8), (2000, 24))
    assert parse_short_chunk_steps("2000=24, 256:8") == ((256, 8), (2000, 24))
    assert parse_short_chunk_steps("") == ()


@pytest.mark.parametrize("bad", ["256", "256:", ":8", "a:8", "256:8.5", "0:8", "256:0", "256:-1"])
def test_parse_short_chunk_steps_malformed(bad):
    with pytest.raises(ConfigError, match=r"^TTT_SHORT_SCORE_FIRST_STEPS: "):
        parse_short_chunk_steps(bad)
