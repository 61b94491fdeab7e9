"""`pgolf audit`: every check passes on consistent evidence and fails (or warns) on the one claim we break.

Run directories and record folders are built by hand (report.json, logs, a real
artifact container, a stand-in train_gpt.py), so each test perturbs exactly one
figure and asserts which check notices it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from pgolf.submission import audit
from pgolf.submission.audit import FAIL, PASS, WARN, audit_paths
from pgolf.app.cli import main
from pgolf.config import QuantConfig, load_preset
from pgolf.quant.artifact import write_artifact
from pgolf.rundir import RunDir

ARTIFACT_NAME = RunDir(".").artifact.name

TARGETS = 1_000
CODE_TEXT = "import lzma as L,base64 as b\n" + "x" * 3000 + "\n"


def _qstate() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"tensors": {"tok_emb.weight.q": torch.randint(-31, 32, (16, 8), generator=g, dtype=torch.int8),
                        "tok_emb.weight.scale": torch.rand(16, generator=g).half(),
                        "smear_lambda": torch.tensor(0.25)},
            "meta": {"bits": {"tok_emb.weight": 6}}}


def _data_dir(root: Path, num_train_shards: int = 3, num_val_tokens: int = TARGETS + 1, num_val_docs: int = 10,
              name: str = "data") -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text(json.dumps({"format": "pgolf-data-v1", "num_train_shards": num_train_shards,
                                                 "num_val_tokens": num_val_tokens, "num_val_docs": num_val_docs}))
    return d


def make_run(root: Path, name: str = "run", *, seed: int = 1, data: Path | None = None, preset: str = "tiny",
             config_set: dict | None = None, bpb: float = 1.25, report_set: dict | None = None,
             train_shards_logged: int | None = None) -> Path:
    """A run directory as train -> quantize -> eval --ttt leave it, with round figures."""
    run = root / name
    run.mkdir(parents=True)
    data = data if data is not None else _data_dir(root)
    cfg = load_preset("tiny").replace({"train.seed": seed, "train.max_wallclock_seconds": 600.0,
                                       **(config_set or {})})
    config = cfg.to_dict()
    config["preset"] = preset
    (run / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    info = write_artifact(run / ARTIFACT_NAME, _qstate(), QuantConfig(compressor="brotli"))
    (run / "train_gpt.py").write_text(CODE_TEXT)
    code_bytes = len(CODE_TEXT.encode())
    manifest = json.loads((data / "manifest.json").read_text())
    shards = manifest["num_train_shards"] if train_shards_logged is None else train_shards_logged
    events = [{"event": "setup", "t_s": 0.1, "train_shards": shards, "val_targets": TARGETS},
              {"event": "calibration", "t_s": 9.0, "num_hessians": 3, "seconds": 3.0, "train_s": 500.0,
               "total_s": 503.0, "within_wallclock": True},
              {"event": "done", "t_s": 9.5, "val_bpb": bpb + 0.02}]
    (run / "train.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    ttt_loss, rt_loss = bpb * 0.7, (bpb + 0.01) * 0.7
    lines = [f"val_tokens: {TARGETS}",
             f"diagnostic quantized val_loss:{rt_loss:.8f} val_bpb:{bpb + 0.01:.8f} eval_time:1000ms",
             f"quantized_ttt_phased val_loss:{ttt_loss:.8f} val_bpb:{bpb:.8f} eval_time:420000ms"]
    (run / "eval.jsonl").write_text("".join(json.dumps({"event": "info", "t_s": 1.0, "text": t}) + "\n"
                                            for t in lines))
    report = {
        "config": config, "steps": 30, "train_seconds": 500.0, "calibration_seconds": 3.0,
        "val_bpb": bpb + 0.02, "val_loss": (bpb + 0.02) * 0.7,
        "model_bytes": info.model_bytes, "code_bytes": code_bytes, "artifact_bytes": info.model_bytes + code_bytes,
        "val_bpb_roundtrip": bpb + 0.01, "val_loss_roundtrip": rt_loss,
        "val_bpb_ttt": bpb + 0.001, "val_loss_ttt": ttt_loss + 0.001,
        "val_bpb_ttt_ensemble": bpb, "val_loss_ttt_ensemble": ttt_loss,
        "peer_mode": "causal", "peer_k": 2, "peer_compliant": True, "coverage_tokens": TARGETS,
        "ttt_schedule": "static", "ttt_virtual_ranks": 8, "target_tokens": TARGETS, "target_bytes": 4_000, "ttt_eval_time_s": 420.0,
        "data_dir": str(data), "data_manifest_sha256": hashlib.sha256((data / "manifest.json").read_bytes()).hexdigest(),
        "phase_seconds": {"train_setup": 1.0, "compile_warmup": 0.0, "train": 500.0, "calibration": 3.0,
                          "eval_load_s": 2.0, "eval_diagnostic_s": 1.0, "ttt_compile_warmup_s": 0.0,
                          "ttt_eval_s": 400.0, "ttt_global_sgd_s": 20.0},
    }
    report.update(report_set or {})
    (run / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    return run


def make_record(run: Path, out: Path, *, seeds: list[int] | None = None, extra: dict | None = None,
                readme: str = "# record\n") -> Path:
    """A record folder laid out as `pgolf pack` writes it (submission.json from record.build_submission)."""
    from pgolf.config import RunConfig
    from pgolf.submission.record import build_submission

    out.mkdir(parents=True)
    for name in ("train_gpt.py", "config.json", "report.json", "train.jsonl", "eval.jsonl"):
        shutil.copy2(run / name, out / name)
    report = json.loads((run / "report.json").read_text())
    cfg = RunConfig.from_dict(json.loads((run / "config.json").read_text()))
    code, model = os.path.getsize(run / "train_gpt.py"), os.path.getsize(run / ARTIFACT_NAME)
    sub = build_submission({**report, "author": "t", "date": "2026-01-01"}, cfg,
                           {"artifact_bytes": code + model, "code_bytes": code, "model_bytes": model})
    if seeds is not None:
        sub["seeds"] = seeds
    sub.update(extra or {})
    (out / "submission.json").write_text(json.dumps(sub, indent=2))
    (out / "README.md").write_text(readme)
    from pgolf.submission.record import seed_log

    (out / f"train_seed{cfg.train.seed}.log").write_text(seed_log(RunDir(run)))
    return out


def statuses(checks, name: str, subject: str | None = None) -> list[str]:
    got = [c.status for c in checks if c.name == name and (subject is None or c.subject == subject)]
    assert got, f"no {name} check in {[c.name for c in checks]}"
    return got


def detail(checks, name: str) -> str:
    return " | ".join(c.detail for c in checks if c.name == name)


def _edit_json(path: Path, **fields) -> None:
    d = json.loads(path.read_text())
    d.update(fields)
    path.write_text(json.dumps(d))


# --------------------------------------------------------------------------- a clean run
def test_clean_run_passes_every_check(tmp_path, capsys):
    run = make_run(tmp_path)
    checks = audit_paths([run])
    assert [c for c in checks if c.status != PASS] == []
    names = {c.name for c in checks}
    assert {"size.model", "size.code", "size.total", "time.train", "time.eval", "time.untimed",
            "legality.peer_mode", "legality.coverage", "legality.ttt_schedule", "legality.calibration",
            "data.manifest", "data.train_shards", "data.val_tokens", "consistency.log", "consistency.config_json",
            "artifact.integrity"} <= names
    total = os.path.getsize(run / "train_gpt.py") + os.path.getsize(run / ARTIFACT_NAME)
    assert f"= {total:,} bytes" in detail(checks, "size.total")
    assert main(["audit", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["STATUS", "CHECK", "SUBJECT", "DETAIL"]
    assert f"{len(checks)} checks: {len(checks)} pass, 0 warn, 0 fail" in out


def test_cli_rejects_a_path_that_is_neither(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["audit", str(tmp_path / "empty")]) == 2
    assert "neither a run directory" in capsys.readouterr().err
    assert main(["audit", str(tmp_path / "missing")]) == 2


# --------------------------------------------------------------------------- size
def test_size_recomputed_from_disk_catches_a_stale_claim(tmp_path):
    run = make_run(tmp_path)
    with open(run / "train_gpt.py", "a") as f:
        f.write("#")
    checks = audit_paths([run])
    assert statuses(checks, "size.code") == [FAIL]
    assert statuses(checks, "size.total") == [FAIL]  # report artifact_bytes no longer equals code + model
    assert statuses(checks, "size.model") == [PASS]
    assert main(["audit", str(run)]) == 1


def test_size_model_claim_must_equal_the_artifact_file(tmp_path):
    run = make_run(tmp_path)
    size = os.path.getsize(run / ARTIFACT_NAME)
    _edit_json(run / "report.json", model_bytes=size - 1)
    checks = audit_paths([run])
    assert statuses(checks, "size.model") == [FAIL]
    assert f"{size:,} bytes on disk" in detail(checks, "size.model")


def test_size_over_the_cap_fails(tmp_path):
    run = make_run(tmp_path, config_set={"quant.size_cap_bytes": 1_000})
    checks = audit_paths([run])
    assert statuses(checks, "size.total") == [FAIL]
    assert "OVER THE CAP" in detail(checks, "size.total")
    # exactly at the cap is allowed (<=)
    total = os.path.getsize(run / "train_gpt.py") + os.path.getsize(run / ARTIFACT_NAME)
    run2 = make_run(tmp_path, "run2", config_set={"quant.size_cap_bytes": total})
    assert statuses(audit_paths([run2]), "size.total") == [PASS]


def test_record_run_is_held_to_the_decimal_16mb_cap(tmp_path):
    run = make_run(tmp_path, preset="seed", config_set={"quant.size_cap_bytes": 10**9})
    checks = audit_paths([run])
    assert "cap 16,000,000" in detail(checks, "size.total")


# --------------------------------------------------------------------------- time
def test_time_budgets(tmp_path):
    ok = make_run(tmp_path, "ok", report_set={"train_seconds": 597.0, "calibration_seconds": 3.0,
                                              "ttt_eval_time_s": 600.0})
    over = make_run(tmp_path, "over", report_set={"train_seconds": 597.5, "calibration_seconds": 3.0,
                                                  "ttt_eval_time_s": 600.2})
    checks = audit_paths([ok, over])
    assert statuses(checks, "time.train", str(ok)) == [PASS]
    assert statuses(checks, "time.eval", str(ok)) == [PASS]
    assert statuses(checks, "time.train", str(over)) == [FAIL]
    assert statuses(checks, "time.eval", str(over)) == [FAIL]


def test_eval_time_falls_back_to_phase_seconds(tmp_path):
    run = make_run(tmp_path)
    rep = json.loads((run / "report.json").read_text())
    del rep["ttt_eval_time_s"]
    rep["phase_seconds"].update(ttt_eval_s=590.0, ttt_global_sgd_s=15.0)
    (run / "report.json").write_text(json.dumps(rep))
    checks = audit_paths([run])
    assert statuses(checks, "time.eval") == [FAIL]
    assert "605.0 s" in detail(checks, "time.eval")


def test_compile_warmup_is_listed_and_warned_strict_fails(tmp_path, capsys):
    run = make_run(tmp_path)
    rep = json.loads((run / "report.json").read_text())
    rep["phase_seconds"].update(compile_warmup=136.4, ttt_compile_warmup_s=260.5)
    (run / "report.json").write_text(json.dumps(rep))
    checks = audit_paths([run])
    assert statuses(checks, "time.untimed") == [WARN]
    assert "136.4 s" in detail(checks, "time.untimed") and "260.5 s" in detail(checks, "time.untimed")
    assert main(["audit", str(run)]) == 0
    assert main(["audit", "--strict", str(run)]) == 1


def test_missing_ttt_is_a_warning(tmp_path):
    run = make_run(tmp_path)
    rep = json.loads((run / "report.json").read_text())
    for k in ("ttt_eval_time_s", "val_bpb_ttt", "val_bpb_ttt_ensemble", "peer_mode", "coverage_tokens"):
        rep.pop(k)
    for k in ("ttt_eval_s", "ttt_global_sgd_s"):
        rep["phase_seconds"].pop(k)
    (run / "report.json").write_text(json.dumps(rep))
    checks = audit_paths([run])
    assert statuses(checks, "time.eval") == [WARN]
    assert statuses(checks, "legality.coverage") == [PASS]


# --------------------------------------------------------------------------- legality
def test_dynamic_ttt_schedule_is_flagged_not_reproducible(tmp_path):
    static = make_run(tmp_path, "static")
    assert "8 virtual ranks" in detail(audit_paths([static]), "legality.ttt_schedule")
    for name, fields in (("dynamic", {"ttt_schedule": "dynamic", "ttt_virtual_ranks": 2}),
                         ("unrecorded", {"ttt_schedule": None, "ttt_virtual_ranks": None})):
        checks = audit_paths([make_run(tmp_path, name, report_set=fields)])
        assert statuses(checks, "legality.ttt_schedule") == [WARN]
        assert "not reproducible" in detail(checks, "legality.ttt_schedule")


def test_seed_mode_ensemble_fails_legality(tmp_path):
    run = make_run(tmp_path, report_set={"peer_mode": "pr2139", "peer_compliant": False})
    checks = audit_paths([run])
    assert statuses(checks, "legality.peer_mode") == [FAIL]
    assert "C1" in detail(checks, "legality.peer_mode") and "C4" in detail(checks, "legality.peer_mode")
    # the config alone is enough: a record that would run the seed ensemble is non-compliant
    run2 = make_run(tmp_path, "r2", config_set={"ttt.peer_mode": "pr2139"})
    rep = json.loads((run2 / "report.json").read_text())
    rep.pop("peer_mode")
    (run2 / "report.json").write_text(json.dumps(rep))
    assert statuses(audit_paths([run2]), "legality.peer_mode") == [FAIL]


def test_partial_ensemble_coverage_fails_c4(tmp_path):
    run = make_run(tmp_path, report_set={"coverage_tokens": TARGETS - 1})
    checks = audit_paths([run])
    assert statuses(checks, "legality.coverage") == [FAIL]
    assert f"{TARGETS - 1:,} of {TARGETS:,}" in detail(checks, "legality.coverage")
    off = make_run(tmp_path, "off", report_set={"peer_mode": "off", "peer_k": 1, "coverage_tokens": 0})
    assert statuses(audit_paths([off]), "legality.coverage") == [PASS]


def test_calibration_must_finish_inside_the_training_clock(tmp_path):
    late = make_run(tmp_path, "late", report_set={"train_seconds": 596.0, "calibration_seconds": 5.0})
    flagged = make_run(tmp_path, "flagged")
    lines = (flagged / "train.jsonl").read_text().replace('"within_wallclock": true', '"within_wallclock": false')
    (flagged / "train.jsonl").write_text(lines)
    uncapped = make_run(tmp_path, "uncapped", config_set={"train.max_wallclock_seconds": 0.0})
    checks = audit_paths([late, flagged, uncapped])
    assert statuses(checks, "legality.calibration", str(late)) == [FAIL]
    assert statuses(checks, "legality.calibration", str(flagged)) == [FAIL]
    assert statuses(checks, "legality.calibration", str(uncapped)) == [WARN]


# --------------------------------------------------------------------------- data
def test_record_run_data_counts(tmp_path):
    good = _data_dir(tmp_path, 80, audit.CHALLENGE_VAL_STREAM_TOKENS, 50_000, name="good")
    overlap = _data_dir(tmp_path, 1499, audit.CHALLENGE_VAL_STREAM_TOKENS, 50_000, name="overlap")
    r_good = make_run(tmp_path, "good_run", preset="record", data=good,
                      report_set={"target_tokens": 47_853_343, "coverage_tokens": 47_853_343})
    r_trunc = make_run(tmp_path, "trunc_run", preset="record", data=good,
                       report_set={"target_tokens": 47_851_520, "coverage_tokens": 47_851_520})
    r_bad = make_run(tmp_path, "bad_run", preset="seed", data=overlap)
    r_tiny = make_run(tmp_path, "tiny_run", data=overlap)  # not a record claim: counts are informational
    checks = audit_paths([r_good, r_trunc, r_bad, r_tiny])
    for run in (r_good, r_trunc):
        assert statuses(checks, "data.train_shards", str(run)) == [PASS]
        assert statuses(checks, "data.val_tokens", str(run)) == [PASS]
    assert statuses(checks, "data.train_shards", str(r_bad)) == [WARN]
    assert "1499" in [c.detail for c in checks if c.name == "data.train_shards" and c.subject == str(r_bad)][0]
    assert statuses(checks, "data.val_tokens", str(r_bad)) == [WARN]
    assert statuses(checks, "data.train_shards", str(r_tiny)) == [PASS]


def test_manifest_changed_since_the_run_fails(tmp_path):
    run = make_run(tmp_path)
    _edit_json(tmp_path / "data" / "manifest.json", num_train_shards=4)
    checks = audit_paths([run])
    assert statuses(checks, "data.manifest") == [FAIL]


def test_logged_shards_must_match_the_manifest(tmp_path):
    run = make_run(tmp_path, train_shards_logged=7)
    assert statuses(audit_paths([run]), "data.train_shards") == [FAIL]


def test_manifest_hash_equal_across_runs(tmp_path):
    a = make_run(tmp_path, "a", seed=1)
    b = make_run(tmp_path, "b", seed=2, data=_data_dir(tmp_path, 5, name="other"))
    checks = audit_paths([a, b])
    assert statuses(checks, "data.manifest_equal") == [FAIL]
    c = make_run(tmp_path, "c", seed=3)
    assert statuses(audit_paths([a, c]), "data.manifest_equal") == [PASS]


# --------------------------------------------------------------------------- consistency
def test_config_hash_identical_across_seeds(tmp_path):
    a = make_run(tmp_path, "a", seed=1)
    b = make_run(tmp_path, "b", seed=2)
    c = make_run(tmp_path, "c", seed=3, config_set={"train.matrix_lr": 0.03})
    assert statuses(audit_paths([a, b]), "consistency.config_hash") == [PASS]
    checks = audit_paths([a, b, c])
    assert statuses(checks, "consistency.config_hash") == [FAIL]
    assert "train.matrix_lr" in detail(checks, "consistency.config_hash")


def test_same_seed_run_twice_is_flagged(tmp_path):
    a = make_run(tmp_path, "a", seed=1, bpb=1.25)
    b = make_run(tmp_path, "b", seed=1, bpb=1.24)
    assert statuses(audit_paths([a, b]), "consistency.distinct_seeds") == [WARN]


def test_report_must_match_the_eval_log(tmp_path):
    run = make_run(tmp_path)
    _edit_json(run / "report.json", val_bpb_ttt_ensemble=1.2)
    checks = audit_paths([run])
    assert FAIL in statuses(checks, "consistency.log")
    assert "1.25000000" in detail(checks, "consistency.log")


def test_config_json_edited_after_the_run_fails(tmp_path):
    run = make_run(tmp_path)
    cfg = json.loads((run / "config.json").read_text())
    cfg["ttt"]["lora_rank"] = 16
    (run / "config.json").write_text(json.dumps(cfg))
    checks = audit_paths([run])
    assert statuses(checks, "consistency.config_json") == [FAIL]
    assert "ttt.lora_rank" in detail(checks, "consistency.config_json")


def test_record_folder_inside_its_run_dir(tmp_path):
    run = make_run(tmp_path, seed=42)
    make_record(run, run / "record")
    checks = audit_paths([run])
    assert [c for c in checks if c.status != PASS] == []
    rec = str(run / "record")
    # the record has no artifact of its own: the audit measures the run's, next to it
    assert statuses(checks, "artifact.integrity", rec) == [PASS]
    assert statuses(checks, "size.total", rec) == [PASS]
    assert statuses(checks, "consistency.numbers", rec) == [PASS]


def test_submission_numbers_must_equal_the_report(tmp_path):
    run = make_run(tmp_path, seed=42)
    rec = make_record(run, tmp_path / "rec", extra={"val_bpb": 1.2})
    checks = audit_paths([rec])
    assert statuses(checks, "consistency.numbers") == [FAIL]
    rec2 = make_record(run, tmp_path / "rec2", extra={"bytes_total": 15_000_000})
    assert statuses(audit_paths([rec2]), "size.total", str(rec2)) == [FAIL]


def test_record_without_artifact_warns(tmp_path):
    run = make_run(tmp_path, seed=42)
    rec = make_record(run, tmp_path / "rec")
    checks = audit_paths([rec])
    assert statuses(checks, "artifact.integrity") == [WARN]
    assert statuses(checks, "size.model") == [WARN]
    assert FAIL not in [c.status for c in checks]


def test_three_seeds_claim_with_one_seed_fails(tmp_path):
    run = make_run(tmp_path, seed=42)
    rec = make_record(run, tmp_path / "rec", extra={"three_seeds": True})
    checks = audit_paths([rec])
    assert statuses(checks, "consistency.seed_claims") == [FAIL]
    rec2 = make_record(run, tmp_path / "rec2", readme="# x\n\nMean over 3 seeds.\n")
    assert statuses(audit_paths([rec2]), "consistency.seed_claims") == [WARN]


def test_listed_seeds_need_reports_and_the_mean_is_checked(tmp_path):
    runs = [make_run(tmp_path, f"s{s}", seed=s, bpb=1.25 + 0.01 * s) for s in (1, 2, 3)]
    rec = make_record(runs[0], tmp_path / "rec", seeds=[1, 2, 3])
    mean_bpb = (1.26 + 1.27 + 1.28) / 3
    sub = json.loads((rec / "submission.json").read_text())
    sub.update(val_bpb=mean_bpb, val_loss=mean_bpb * 0.7, three_seeds=True)
    sub["seed_results"] = {str(s): {"val_bpb": 1.25 + 0.01 * s} for s in (1, 2, 3)}
    (rec / "submission.json").write_text(json.dumps(sub))

    alone = audit_paths([rec])
    assert statuses(alone, "consistency.seeds") == [FAIL]
    assert "[2, 3]" in detail(alone, "consistency.seeds")

    checks = audit_paths([rec, *runs])
    for name in ("consistency.seeds", "consistency.seed_claims", "consistency.numbers",
                 "consistency.config_hash", "data.manifest_equal", "consistency.distinct_seeds"):
        assert statuses(checks, name, str(rec)) == [PASS], name
    assert not [c for c in checks if c.name == "consistency.seeds" and c.status == WARN]

    sub["val_bpb"] = 1.26  # the best seed, not the mean
    (rec / "submission.json").write_text(json.dumps(sub))
    assert statuses(audit_paths([rec, *runs]), "consistency.numbers") == [FAIL]


def test_per_seed_subfolders_of_a_record(tmp_path):
    runs = [make_run(tmp_path / "runs", f"seed_{s}", seed=s, bpb=1.25) for s in (1, 2)]
    rec = make_record(runs[0], tmp_path / "rec", seeds=[1, 2], readme="# x\n\n2-seed mean.\n")
    for r in runs:
        shutil.copytree(r, rec / r.name)
    sub = json.loads((rec / "submission.json").read_text())
    assert sorted(sub["seed_results"]) == ["1"]  # pack writes one seed; a 2-seed record lists both
    sub["seed_results"]["2"] = sub["seed_results"]["1"]
    (rec / "submission.json").write_text(json.dumps(sub))
    checks = audit_paths([rec])
    assert [c for c in checks if c.status == FAIL] == []
    # each seed's copy is audited, measured against the record's one train_gpt.py
    assert statuses(checks, "size.code", str(rec / "seed_2")) == [PASS]
    assert statuses(checks, "consistency.seeds", str(rec)) == [PASS]
    assert statuses(checks, "consistency.seed_claims", str(rec)) == [PASS]
    cfg = json.loads((rec / "seed_2" / "report.json").read_text())
    cfg["config"]["ttt"]["lora_rank"] = 16
    (rec / "seed_2" / "report.json").write_text(json.dumps(cfg))
    (rec / "seed_2" / "config.json").unlink()
    assert statuses(audit_paths([rec]), "consistency.config_hash") == [FAIL]


def test_code_changed_between_quantize_and_pack_is_explained(tmp_path):
    run = make_run(tmp_path, seed=42)
    rec = make_record(run, tmp_path / "rec")
    (rec / "train_gpt.py").write_text(CODE_TEXT + "#")
    _edit_json(rec / "submission.json", bytes_code=len(CODE_TEXT) + 1)
    checks = audit_paths([rec])
    assert statuses(checks, "size.code") == [FAIL]
    assert "quantize time" in detail(checks, "size.code")


def test_run_not_in_the_submission_is_warned(tmp_path):
    run = make_run(tmp_path, "a", seed=42)
    rec = make_record(run, tmp_path / "rec")
    other = make_run(tmp_path, "b", seed=7)
    checks = audit_paths([rec, other])
    assert WARN in statuses(checks, "consistency.seeds", str(other))


# --------------------------------------------------------------------------- artifact
def test_corrupt_artifact_fails_integrity(tmp_path):
    run = make_run(tmp_path)
    art = run / ARTIFACT_NAME
    data = bytearray(art.read_bytes())
    data[len(data) // 2] ^= 0xFF
    art.write_bytes(bytes(data))
    checks = audit_paths([run])
    assert statuses(checks, "artifact.integrity") == [FAIL]
    assert statuses(checks, "size.model") == [PASS]  # same length: only the checksum can tell


def test_run_without_artifact_fails(tmp_path):
    run = make_run(tmp_path)
    (run / ARTIFACT_NAME).unlink()
    checks = audit_paths([run])
    assert statuses(checks, "artifact.integrity") == [FAIL]
    assert statuses(checks, "size.model") == [WARN]


@pytest.mark.skipif(os.environ.get("PGOLF_SLOW") != "1", reason="end-to-end run takes minutes; set PGOLF_SLOW=1")
def test_end_to_end_tiny_run(tmp_path, tiny_data):
    rc = main(["run", "--data", str(tiny_data), "--preset", "tiny", "--out", str(tmp_path / "run"),
               "--set", "train.iterations=4"])
    assert rc == 0
    run = tmp_path / "run"
    checks = audit_paths([run])
    assert [c for c in checks if c.status == FAIL] == []
    assert "recomputed from disk" in [c.detail for c in checks if c.name == "size.total"
                                      and c.subject == str(run / "record")][0]
    assert statuses(checks, "consistency.numbers", str(run / "record")) == [PASS]
    with open(run / ARTIFACT_NAME, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert statuses(audit_paths([run]), "artifact.integrity") == [FAIL, FAIL]  # the run and its record


# --------------------------------------------------------------------------- text logs and tracks of pgolf records
def test_seed_text_log_must_score_what_the_report_does(tmp_path, capsys):
    run = make_run(tmp_path, seed=42)
    rec = make_record(run, tmp_path / "rec")
    assert statuses(audit_paths([rec]), "consistency.seed_logs") == [PASS]
    log = rec / "train_seed42.log"
    text = log.read_text()
    log.write_text(text.replace("  score: val_bpb_ttt_ensemble 1.25000000", "  score: val_bpb_ttt_ensemble 1.20000000"))
    assert "score: val_bpb_ttt_ensemble 1.2" in log.read_text()
    assert statuses(audit_paths([rec]), "consistency.seed_logs") == [FAIL]
    log.write_text(text.split("final:")[0])  # cut off before its final block
    assert main(["audit", str(rec)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train_seed42.log: cut off mid-run" in err
    log.unlink()
    assert statuses(audit_paths([rec]), "consistency.seed_logs") == [WARN]


def test_record_track_sets_the_time_limits(tmp_path):
    run = make_run(tmp_path, seed=42, report_set={"train_seconds": 900.0, "ttt_eval_time_s": 700.0})
    rec = make_record(run, tmp_path / "rec")
    checks = audit_paths([rec])
    assert statuses(checks, "time.train", str(rec)) == [FAIL] and statuses(checks, "time.eval", str(rec)) == [FAIL]
    _edit_json(rec / "submission.json", track="non_record_16mb")
    checks = audit_paths([rec])
    assert statuses(checks, "time.train", str(rec)) == [PASS] and statuses(checks, "time.eval", str(rec)) == [PASS]
    assert "no wallclock budget" in detail(checks, "time.train")
    assert "non_record_16mb (submission.json track" in detail(checks, "track")


def test_seeds_quantized_with_different_code_fail(tmp_path):
    runs = [make_run(tmp_path, f"s{s}", seed=s, report_set={"code_raw_bytes": 200_000}) for s in (1, 2)]
    assert statuses(audit_paths(runs), "consistency.code_hash") == [PASS]
    _edit_json(runs[1] / "report.json", code_raw_bytes=200_123)
    checks = audit_paths(runs)
    assert statuses(checks, "consistency.code_hash") == [FAIL]
    assert "200000, 200123" in detail(checks, "consistency.code_hash")
