"""`pgolf audit` on record folders in the challenge's own format: text logs, train_gpt.py, submission.json.

The folders are synthetic (`upstream_records`): a clean three-seed record passes every
check, and each test breaks one claim and asserts that exactly the check about it fails.
"""

from __future__ import annotations

import json

import pytest

from pgolf.app.cli import main
from pgolf.submission.audit import FAIL, PASS, WARN, audit_paths
from pgolf.submission.upstream_log import read_log
from upstream_records import upstream_log, upstream_record

THREE = {42: 1.05749056, 314: 1.05801234, 0: 1.05710001}


def by_name(checks) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for c in checks:
        out.setdefault(c.name, set()).add(c.status)
    return out


def failed(checks) -> list[str]:
    return sorted({c.name for c in checks if c.status != PASS})


def test_log_parser_reads_every_figure(tmp_path):
    p = tmp_path / "train_seed7.log"
    p.write_text(upstream_log(7, bpb=1.06, train_ms=590_000, eval_s=512.3, model_bytes=15_000_000, code_bytes=40_000))
    log = read_log(p)
    assert log.fmt == "upstream" and log.seed == 7 and log.caseops and log.expects_ttt
    assert (log.steps, log.iterations, log.train_seconds, log.eval_seconds) == (5006, 20000, 590.0, 512.3)
    assert log.score == ("ttt_ensemble", 1.06)
    assert set(log.bpb) == {"pre_ema", "prequant", "quantized", "ttt", "ttt_ensemble"}
    assert (log.artifact_bytes, log.model_bytes, log.code_bytes, log.code_raw_bytes) == (15_040_000, 15_000_000,
                                                                                          40_000, 201_974)
    assert (log.train_shards, log.val_docs, log.val_tokens) == (80, 50_000, 47_853_343)
    assert log.source_sha256 is not None and "seed" not in log.config and "num_layers" in log.config
    assert log.nats_per_bpb == pytest.approx(2.18834, rel=1e-6)


def test_clean_three_seed_record_passes_every_check(tmp_path, capsys):
    rec = upstream_record(tmp_path / "rec", THREE)
    checks = audit_paths([rec])
    assert not failed(checks), [c for c in checks if c.status != PASS]
    names = by_name(checks)
    for name in ("size.code", "size.total", "time.train", "time.eval", "consistency.seeds", "consistency.seed_claims",
                 "consistency.numbers", "consistency.config_hash", "consistency.code_hash", "data.train_shards",
                 "data.val_docs"):
        assert names[name] == {PASS}, name
    assert main(["audit", str(rec), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["passed"] and out["counts"]["FAIL"] == 0 and len(out["checks"]) == len(checks)


def test_three_seeds_claimed_one_log_fails_that_check_only(tmp_path, capsys):
    """The acceptance case: submission.json lists three seeds (and their figures); one log is in the folder."""
    rec = upstream_record(tmp_path / "rec", {42: THREE[42]}, seeds=[42, 314, 0], results=THREE,
                          submission={"three_seeds": True})
    checks = audit_paths([rec])
    assert failed(checks) == ["consistency.seeds"]
    bad = next(c for c in checks if c.status == FAIL)
    assert "[314, 0] listed but no log" in bad.detail and bad.subject == str(rec)
    assert main(["audit", str(rec)]) == 1
    lines = [t for t in capsys.readouterr().out.splitlines() if t.startswith("FAIL")]
    assert len(lines) == 1 and "consistency.seeds" in lines[0]


def test_three_seeds_flag_with_one_listed_seed_fails_the_claim(tmp_path):
    rec = upstream_record(tmp_path / "rec", {42: THREE[42]}, submission={"three_seeds": True})
    assert failed(audit_paths([rec])) == ["consistency.seed_claims"]


def test_caseops_leak_fingerprint_fails_the_data_checks(tmp_path):
    rec = upstream_record(tmp_path / "rec", THREE, per_seed_kw={314: {"train_shards": 1499, "val_docs": 10_000,
                                                                      "val_tokens": 9_000_001}})
    checks = audit_paths([rec])
    assert failed(checks) == ["data.train_shards", "data.val_docs"]
    bad = [c for c in checks if c.status == FAIL]
    assert all(c.subject.endswith("train_seed314.log") for c in bad)
    assert "1499" in bad[0].detail and "#2127" in bad[0].detail and "10,000 val docs" in bad[1].detail


def test_plain_sp8192_run_is_not_held_to_the_caseops_counts(tmp_path):
    rec = upstream_record(tmp_path / "rec", THREE, log_kw={"caseops": False, "train_shards": 128,
                                                           "val_tokens": 40_540_160})
    assert not failed(audit_paths([rec]))


def test_seeds_with_different_config_or_code_fail(tmp_path):
    rec = upstream_record(tmp_path / "a", THREE, per_seed_kw={0: {"hp_extra": {"matrix_lr": "0.03"}}})
    checks = audit_paths([rec])
    assert failed(checks) == ["consistency.config_hash"]
    assert "matrix_lr='0.03'" in next(c.detail for c in checks if c.status == FAIL)
    rec = upstream_record(tmp_path / "b", THREE, per_seed_kw={0: {"source": "print('other code')\n" * 3}})
    assert failed(audit_paths([rec])) == ["consistency.code_hash"]


def test_budgets_follow_the_track(tmp_path):
    slow = {"train_ms": 601_500, "eval_s": 640.0}
    rec = upstream_record(tmp_path / "rec", THREE, per_seed_kw={42: slow})
    checks = audit_paths([rec])
    assert failed(checks) == ["time.eval", "time.train"]
    assert "601.5 s > 600 s" in next(c.detail for c in checks if c.name == "time.train" and c.status == FAIL)
    for track in ("non_record_16mb", "non-record-unlimited-compute-16mb"):
        rec = upstream_record(tmp_path / track, THREE, per_seed_kw={42: slow}, submission={"track": track})
        checks = audit_paths([rec])
        assert not failed(checks)
        assert "no wallclock budget" in next(c.detail for c in checks if c.name == "time.train"
                                             and "seed42" in c.subject)


def test_track_from_the_folder_when_submission_has_none(tmp_path):
    rec = upstream_record(tmp_path / "records" / "track_non_record_16mb" / "2026-05-01_X", THREE,
                          per_seed_kw={42: {"train_ms": 700_000}}, submission={"track": ""})
    checks = audit_paths([rec])
    assert not failed(checks)
    assert "folder track_non_record_16mb" in next(c.detail for c in checks if c.name == "track")


def test_size_over_the_cap_and_claims_that_disagree(tmp_path):
    rec = upstream_record(tmp_path / "a", THREE, log_kw={"model_bytes": 15_999_990})
    checks = audit_paths([rec])
    assert failed(checks) == ["size.total"]
    assert "OVER THE CAP" in next(c.detail for c in checks if c.status == FAIL)
    rec = upstream_record(tmp_path / "b", THREE, submission={"bytes_code": 1234})
    assert failed(audit_paths([rec])) == ["size.code"]


def test_numbers_must_match_the_logs(tmp_path):
    rec = upstream_record(tmp_path / "a", THREE, results={314: 1.0570})  # seed_results says other than the log
    checks = audit_paths([rec])
    assert failed(checks) == ["consistency.numbers"]
    assert "seed_results[314].val_bpb 1.057 != train_seed314.log" in next(c.detail for c in checks
                                                                          if c.status == FAIL)
    rec = upstream_record(tmp_path / "b", THREE, submission={"val_bpb": 1.0500})
    assert failed(audit_paths([rec])) == ["consistency.numbers"]
    # a headline rounded to fewer decimals stands for the figures it rounds
    rec = upstream_record(tmp_path / "c", THREE, submission={"val_bpb": 1.0575, "val_bpb_std": 0.0005})
    assert not failed(audit_paths([rec]))


# --------------------------------------------------------------------------- bad input: one line, exit 2
def _one_line_error(capsys, argv: list[str], *needles: str) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("pgolf: error: ") and "Traceback" not in err
    for n in needles:
        assert n in err, err


def test_record_folder_without_logs(tmp_path, capsys):
    rec = upstream_record(tmp_path / "rec", THREE)
    for p in rec.glob("*.log"):
        p.unlink()
    _one_line_error(capsys, ["audit", str(rec)], "without logs")


def test_log_cut_off_mid_run(tmp_path, capsys):
    rec = upstream_record(tmp_path / "rec", THREE, per_seed_kw={314: {"cut_at": "beginning TTT eval timer"}})
    _one_line_error(capsys, ["audit", str(rec)], "train_seed314.log", "cut off mid-run", "quantized_ttt_phased")
    _one_line_error(capsys, ["significance", str(rec / "train_seed314.log"), "--baseline", "1.06"], "cut off")


def test_submission_json_broken_or_incomplete(tmp_path, capsys):
    rec = upstream_record(tmp_path / "rec", THREE)
    (rec / "submission.json").write_text("{not json")
    _one_line_error(capsys, ["audit", str(rec)], "submission.json", "not readable JSON")
    (rec / "submission.json").write_text(json.dumps({"author": "x", "seeds": [42]}))
    _one_line_error(capsys, ["audit", str(rec)], "lacks name, val_bpb")
    (rec / "submission.json").write_text(json.dumps({"author": "x", "name": "y", "val_bpb": "1.05"}))
    _one_line_error(capsys, ["audit", str(rec)], "val_bpb is '1.05', not a number")


def test_unknown_track_label(tmp_path, capsys):
    rec = upstream_record(tmp_path / "rec", THREE, submission={"track": "speedrun"})
    _one_line_error(capsys, ["audit", str(rec)], "unknown track 'speedrun'")


# --------------------------------------------------------------------------- significance against a named baseline
def test_audit_states_delta_p_value_bar_and_tests(tmp_path, capsys):
    base = upstream_record(tmp_path / "base", {42: 1.0660, 314: 1.0667, 0: 1.0655})
    rec = upstream_record(tmp_path / "rec", THREE)
    assert main(["audit", str(rec), "--baseline", str(base), "--json"]) == 0
    sig = [c for c in json.loads(capsys.readouterr().out)["checks"] if c["check"] == "significance"]
    assert len(sig) == 1 and sig[0]["status"] == PASS
    text = sig[0]["detail"]
    assert "nats" in text and "p=" in text and "0.005 nats better at p < 0.01" in text
    assert "Welch" in text and "paired t-test, two-sided" in text
    # too close to the baseline: the bar fails on the record track
    near = upstream_record(tmp_path / "near", {42: 1.0574, 314: 1.0581, 0: 1.0572})
    checks = audit_paths([rec])
    from pgolf.submission.audit import significance_checks
    from pgolf.submission.significance import read_results

    c = significance_checks([rec], read_results(str(near)), "near")[0]
    assert c.status in (WARN, FAIL) and "FAIL" in c.detail
    assert not failed(checks)


def test_final_line_without_peers_is_own_ttt(tmp_path):
    """#2014-style logs (no peer ensemble) score own-only TTT; the stage follows peer_k, from the log or its dump."""
    text = upstream_log(42, bpb=1.0574, peer_k=1)
    p = tmp_path / "a.log"
    p.write_text(text)
    assert read_log(p).score == ("ttt", 1.0574)
    p.write_text("\n".join(t for t in text.splitlines() if not t.startswith("ttt_phased:")) + "\n")
    assert read_log(p).score == ("ttt_ensemble", 1.0574)  # the dump says ttt_peer_ensemble_k: 4


def test_an_early_baseline_style_log(tmp_path):
    """The first records' logs: no dump, `step:` prefixes, an int8+zlib roundtrip as the final line."""
    p = tmp_path / "train_seed1337.log"
    p.write_text("\n".join([
        "step:0/20000 val_loss:6.9357 val_bpb:4.1077 train_time:0ms step_avg:0.01ms",
        "step:1/20000 train_loss:6.9370 train_time:28ms step_avg:28.47ms",
        "step:13780/20000 val_loss:2.0606 val_bpb:1.2172 train_time:600038ms step_avg:43.54ms",
        "stopping_early: wallclock_cap train_time:600038ms step:13780/20000",
        "Serialized model int8+zlib: 15815847 bytes", "Code size: 47642 bytes",
        "Total submission size int8+zlib: 15863489 bytes",
        "final_int8_zlib_roundtrip val_loss:2.0727 val_bpb:1.2244 eval_time:1402ms",
        "final_int8_zlib_roundtrip_exact val_loss:2.07269931 val_bpb:1.22436570"]) + "\n")
    log = read_log(p)
    assert log.seed == 1337 and log.score == ("quantized", 1.2243657) and log.steps == 13780
    assert (log.train_seconds, log.eval_seconds) == (600.038, 1.402)
    assert (log.artifact_bytes, log.model_bytes, log.code_bytes) == (15_863_489, 15_815_847, 47_642)


def test_a_num_seeds_claim_is_read():
    from pgolf.submission.audit_inputs import FAIL, PASS, seed_claims_check

    assert seed_claims_check({"num_seeds": 3}, None, 3, "r").status == PASS
    assert seed_claims_check({"num_seeds": 3}, None, 1, "r").status == FAIL
    assert seed_claims_check({"three_seeds": True}, None, 1, "r").status == FAIL
