"""runs/gpu_check.py on a machine without a GPU: the JSON's shape, the skip reasons, missing components
named from the probes, one-line errors, the time box, and the pieces of the GPU sections that run on CPU."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "runs" / "gpu_check.py"


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod
    spec.loader.exec_module(mod)
    return mod


no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA behaviour; this machine has CUDA")


def _run(gc, tmp_path, *extra) -> tuple[int, dict]:
    path = tmp_path / "gpu_check.json"
    rc = gc.main(["--out", str(tmp_path / "out"), "--json", str(path), "--quiet", *extra])
    return rc, json.loads(path.read_text())


@no_cuda
def test_no_cuda_run_writes_every_section_skipped_with_the_reason(gc, tmp_path, capsys):
    rc, doc = _run(gc, tmp_path)
    assert rc == 0 and doc["exit_code"] == 0
    assert doc["format"] == gc.FORMAT and doc["mode"] == "no-cuda"
    assert list(doc["sections"]) == list(gc.SECTIONS)
    env = doc["sections"]["environment"]
    assert env["status"] == "ok"
    for key in ("torch", "torch_cuda_build", "cuda_available", "fa3", "triton", "lrzip", "world_size", "probes"):
        assert key in env["figures"], key
    assert set(env["figures"]["probes"]) == set(gc.PROBES)
    for name in gc.SECTIONS[1:]:
        sec = doc["sections"][name]
        assert sec["status"] == "skipped", name
        assert sec["reason"].startswith("no CUDA device"), (name, sec["reason"])
        assert set(sec) >= {"status", "reason", "seconds", "figures", "notes"}
    assert doc["skipped"] == list(gc.SECTIONS[1:]) and doc["failed"] == []
    assert "cuda" in [m["component"] for m in doc["missing"]]
    out = capsys.readouterr().out
    for name in gc.SECTIONS:
        assert name in out
    assert "missing:" in out and "no CUDA device" in out


@no_cuda
def test_strict_fails_when_anything_is_missing(gc, tmp_path):
    rc, doc = _run(gc, tmp_path, "--strict")
    assert rc == 1 and doc["exit_code"] == 1 and doc["strict"] is True


def test_forced_missing_components_are_named(gc, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gc, "probe_cuda", lambda: (False, "no CUDA device (forced)"))
    monkeypatch.setattr(gc, "probe_fa3", lambda: (False, "flash_attn_interface not importable (forced)"))
    monkeypatch.setattr(gc, "probe_triton", lambda: (False, "triton not installed"))
    monkeypatch.setattr(gc, "probe_lrzip", lambda: (True, "/usr/bin/lrzip"))
    monkeypatch.setattr(gc, "probe_packages", lambda: (True, "all"))
    rc, doc = _run(gc, tmp_path)
    assert rc == 0
    missing = {m["component"]: m for m in doc["missing"]}
    assert set(missing) == {"cuda", "fa3", "triton"}
    assert missing["fa3"]["reason"] == "flash_attn_interface not importable (forced)"
    assert missing["triton"]["reason"] == "triton not installed"
    assert all(m["consequence"] for m in doc["missing"])
    assert doc["sections"]["train"]["reason"] == "no CUDA device (forced)"
    out = capsys.readouterr().out
    assert "fa3: flash_attn_interface not importable (forced)" in out
    assert "triton: triton not installed" in out
    assert "lrzip:" not in out.split("missing:")[1]


def test_nothing_missing_but_cuda_when_every_probe_passes(gc, tmp_path, monkeypatch):
    monkeypatch.setattr(gc, "probe_cuda", lambda: (False, "no CUDA device (forced)"))
    for name in ("probe_fa3", "probe_triton", "probe_lrzip", "probe_packages"):
        monkeypatch.setattr(gc, name, lambda: (True, "present"))
    rc, doc = _run(gc, tmp_path, "--strict")
    assert [m["component"] for m in doc["missing"]] == ["cuda"]
    assert rc == 1  # --strict: the skipped sections still count


@pytest.mark.parametrize("argv, words", [
    (["--only", "bogus"], "unknown section"),
    (["--budget", "train=abc"], "not a number"),
    (["--budget", "nope=3"], "SECTION=SECONDS"),
    (["--preset", "cpu"], "seed or record"),
    (["--data", "/nonexistent/dir"], "no manifest.json"),
    (["--ttt-docs", "0"], ">= 1"),
])
def test_bad_input_is_one_line_and_exit_2(gc, capsys, argv, words):
    assert gc.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpu_check: error: ") and words in err[0]


def test_parse_pytest_counts_failures_and_skip_reasons(gc):
    text = "\n".join([
        "..sF",
        "SKIPPED [1] tests/test_attention.py:145: flash_attn_interface not importable",
        "FAILED tests/test_model.py::test_gpu_parity - AssertionError: 0.3 > 0.01",
        "ERROR tests/test_optim.py::test_fused - RuntimeError: boom",
        "2 passed, 1 skipped, 1 failed, 1 error, 300 deselected in 12.34s",
    ])
    got = gc.parse_pytest(text)
    assert (got["passed"], got["skipped"], got["failed"], got["errors"], got["deselected"]) == (2, 1, 1, 1, 300)
    assert got["failing"] == ["tests/test_model.py::test_gpu_parity", "tests/test_optim.py::test_fused"]
    assert got["skip_reasons"] == ["flash_attn_interface not importable"]
    assert gc.parse_pytest("no summary here") == {}


def test_parity_verdict_uses_the_stated_tolerance(gc):
    ok = gc.parity_row(1, {"device": 9.010, "emulated": 9.000, "fp32": 8.999})
    assert ok["within"] and ok["tolerance"] == gc.PARITY_FLOOR_NATS
    # Emulation 0.1 away from fp32: bf16 noise that large lets the device differ by up to 3x that.
    wide = gc.parity_row(2, {"device": 9.25, "emulated": 9.0, "fp32": 9.1})
    assert wide["within"] and math.isclose(wide["tolerance"], gc.PARITY_NOISE_MULT * 0.1, rel_tol=1e-6)
    assert not gc.parity_row(3, {"device": 9.05, "emulated": 9.0, "fp32": 9.0})["within"]
    assert not gc.parity_row(4, {"device": float("nan"), "emulated": 9.0, "fp32": 9.0})["within"]


def test_compare_steps_runs_the_policies_on_the_same_batches(gc, tiny_cfg):
    from pgolf import device, emulation
    from pgolf.loader import build_cu_seqlens

    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        x = torch.randint(2, tiny_cfg.model.vocab_size, (65,), generator=g)
        x[0] = x[40] = 1  # two documents in the row
        cu, _ = build_cu_seqlens(x[:-1], 64)
        batches.append((x[None, :-1], x[None, 1:], cu, 64))
    policies = {"device": device.cpu_policy(), "emulated": emulation.emulated_cuda_policy(),
                "fp32": device.cpu_policy()}
    progress = gc.Progress(None)
    rows = gc.compare_steps(tiny_cfg, batches, policies, progress)
    assert [r["step"] for r in rows] == [1, 2] and progress.figures["steps_done"] == 2
    for r in rows:
        assert r["loss_device"] == r["loss_fp32"]  # same policy, same weights, same batches: identical
        assert r["within"] and math.isfinite(r["loss_emulated"])
    assert rows[1]["loss_device"] != rows[0]["loss_device"]  # the optimizer stepped
    assert device.active() is not policies["emulated"]  # activations were undone


def test_compile_watch_counts_graphs_by_phase(gc):
    progress = gc.Progress(None)
    phase = {"now": "warmup"}
    watch = gc.CompileWatch(progress, "t", lambda: phase["now"])
    fn = torch.compile(lambda x, n: x * n, dynamic=False, backend="eager")
    fn(torch.ones(2), 2)
    phase["now"] = "after_warmup"
    fn(torch.ones(3), 2)  # a new shape: a recompile after the "warmup"
    figs = watch.figures()
    assert figs["t_graphs"] == 2 and figs["t_recompiles"] == 1
    assert figs["t_graphs_by_phase"] == {"warmup": 1, "after_warmup": 1}
    assert progress.figures["t_graphs"] == 2


def test_synthetic_tokens_look_like_documents(gc):
    toks = gc.synthetic_tokens(vocab=8192, num_tokens=200_000, seed=0)
    assert toks.dtype.name == "uint16" and toks.max() < 8192 and toks[0] == 1 and (toks != 0).all()
    mean_doc = toks.size / int((toks == 1).sum())
    assert 0.8 * gc.SYNTH_MEAN_DOC_TOKENS < mean_doc < 1.2 * gc.SYNTH_MEAN_DOC_TOKENS


def test_a_section_over_its_budget_is_killed_and_reported(gc, tmp_path):
    args = gc.parse_args(["--out", str(tmp_path), "--on-cpu"])
    res = gc.run_child("parity", args, budget_s=0.5, logs=tmp_path / "logs")
    assert res["status"] == "timeout" and "budget" in res["reason"]
    assert res["seconds"] < 15


@pytest.mark.skipif(not os.environ.get("PGOLF_SLOW"), reason="runs every section at toy size (~2 min on 2 CPU "
                    "cores): set PGOLF_SLOW=1")
def test_on_cpu_end_to_end_through_the_shell_script(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(REPO / "runs" / "gpu_check.sh"), "--on-cpu", "--out", str(out), "--quiet",
                           "--budget", "ttt=240", "--budget", "train=240", "--total-seconds", "900"],
                          capture_output=True, text=True, timeout=1200)
    doc = json.loads((out / "gpu_check.json").read_text())
    statuses = {k: v["status"] for k, v in doc["sections"].items()}
    assert statuses == {"environment": "ok", "pytest_gpu": "skipped", "data": "ok", "parity": "ok", "train": "ok",
                        "ttt": "ok", "compile": "skipped"}, (statuses, proc.stderr[-2000:])
    assert proc.returncode == 0
    assert doc["sections"]["train"]["figures"]["steps"] == 4
    assert doc["sections"]["ttt"]["figures"]["docs"] == 4 and math.isfinite(doc["sections"]["ttt"]["figures"]["bpb"])
    assert doc["sections"]["parity"]["figures"]["steps_done"] == 2
    assert "parity step 2:" in proc.stdout


def test_train_log_figures_read_a_partial_log(gc, tmp_path):
    log = tmp_path / "train.jsonl"
    assert gc.train_log_figures(log) == {}
    lines = [{"event": "setup"}, {"event": "compile_warmup", "seconds": 61.25}]
    lines += [{"event": "step", "step": k, "elapsed_s": 0.5 * k} for k in (1, 2, 3, 4, 5, 10, 15)]
    log.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    got = gc.train_log_figures(log)
    assert got == {"last_logged_step": 15, "compile_warmup_s": 61.25, "steady_ms_per_step": 500.0,
                   "steady_from_step": 5}


def test_a_section_without_data_is_skipped_with_the_reason(gc, tmp_path):
    rc, doc = _run(gc, tmp_path, "--on-cpu", "--only", "parity")
    assert rc == 0
    assert doc["sections"]["data"]["reason"] == gc.NOT_SELECTED and "data" not in doc["skipped"]
    assert doc["sections"]["parity"]["status"] == "skipped"
    assert doc["sections"]["parity"]["reason"].startswith("no data in ")
