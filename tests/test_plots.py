"""The training plot: drawn from a run's logs, with the warmdown placed where the schedule starts it."""

from __future__ import annotations

import json

import pytest

from pgolf.app.plots import plot_training, warmdown_start_step


def test_warmdown_starts_where_progress_reaches_one_minus_the_fraction():
    steps = [{"step": s, "elapsed_s": 2.0 * s} for s in (10, 20, 30, 40)]
    cfg = {"train": {"warmdown_frac": 0.75, "iterations": 40}}
    assert warmdown_start_step(steps, cfg, budget_s=None) == pytest.approx(10.0)  # step-based: 0.25 * 40
    assert warmdown_start_step(steps, cfg, budget_s=40.0) == pytest.approx(5.0)  # wallclock: 10 s of 40
    assert warmdown_start_step(steps, {"train": {"warmdown_frac": 0.0}}, None) is None


def test_plot_is_written_from_the_logs(tmp_path):
    pytest.importorskip("matplotlib")
    events = [{"event": "setup", "budget_s": None}, {"event": "stage", "step": 0, "seq_len": 32}]
    events += [{"event": "step", "step": s, "loss": 6.0 - s / 10, "elapsed_s": s} for s in range(1, 31)]
    events += [{"event": "val", "tag": "periodic", "step": s, "val_bpb": 3.5 - s / 100} for s in (10, 20)]
    events += [{"event": "looping", "step": 12}, {"event": "val", "tag": "post_ema", "step": 30, "val_bpb": 3.1}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (tmp_path / "config.json").write_text(json.dumps({"preset": "tiny", "train": {"train_batch_tokens": 1024,
                                                                                  "warmdown_frac": 0.5,
                                                                                  "iterations": 30}}))
    (tmp_path / "report.json").write_text(json.dumps({"val_bpb_prequant": 3.1, "val_bpb_roundtrip": 3.15,
                                                      "val_bpb_ttt": 3.0, "data_dir": "/data"}))
    out = plot_training(tmp_path)
    assert out == tmp_path / "train_loss.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_log_no_plot(tmp_path):
    assert plot_training(tmp_path) is None
