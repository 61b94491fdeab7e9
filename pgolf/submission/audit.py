"""`pgolf audit`: re-derive a submission's claims from the files on disk and hold them to the rules.

A record is a set of claims (bytes, seconds, bpb, seeds, data) spread over
report.json, submission.json, README.md and the logs. Past submissions failed
review because those claims disagreed with each other or with the files: an
over-cap artifact, a headline that was not in the log, `three_seeds: true` with
one seed, mixed-config seeds, a non-compliant ensemble, train/val overlap
(1499 shards instead of 80). The audit therefore recomputes what it can from
the bytes on disk (file sizes, the artifact's checksum, the manifest's sha256),
compares every claim with its source, and prints one PASS / WARN / FAIL line
per check with the figures behind it:

    size         code bytes + model bytes <= cap, equal to the claims
    time         train + calibration <= 600 s, TTT eval <= 600 s, untimed warmups listed
    legality     peer mode (pr2139 = C1/C4 violation), n-gram tilt order (stream = not causal in the
                 scoring order), ensemble coverage (C4), calibration on the clock
    data         train shards, val targets, manifest hash (the challenge's 80 / 47,853,343 for record runs)
    consistency  submission.json = report.json = logs, seeds present and counted, one config across seeds
    artifact     the artifact decodes (magic, tag, checksum, streams)

Inputs are run directories (report.json + config.json + logs + artifact) and
packed record folders (train_gpt.py + submission.json + README.md + logs); a
run directory's own `record/` folder is audited with it. WARN marks evidence
that is missing or a convention that differs; `--strict` fails on it too.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from pgolf.config import flatten
from pgolf.data import manifest_sha256
from pgolf.errors import ArtifactError
from pgolf.quant.artifact import FORMAT_TAG, read_artifact
from pgolf.submission import audit_logs
from pgolf.submission.audit_inputs import (FAIL, PASS, WARN, Check, RunView, Submission, cfg_get, is_run_record,
                                           load_inputs, seed_claims_check)
from pgolf.submission.record import final_result as headline
from pgolf.submission.significance import SEED_FIELDS
from pgolf.submission.tracks import Track, guess_track, track_of_record
from pgolf.submission.upstream_log import read_log

CHALLENGE_CAP_BYTES = 16_000_000
CHALLENGE_TRAIN_S = 600.0
CHALLENGE_EVAL_S = 600.0
CHALLENGE_TRAIN_SHARDS = 80
CHALLENGE_VAL_DOCS = 50_000
# Scored targets of the challenge's val stream: the whole stream (N - 1, the seed's EVAL_INCLUDE_TAIL=1) or the
# reference's truncation to a multiple of 2048; the stream itself holds N tokens either way.
CHALLENGE_VAL_TARGETS = (47_853_343, 47_851_520)
CHALLENGE_VAL_STREAM_TOKENS = 47_853_344
RECORD_PRESETS = ("record", "seed")
# Logs print bpb with 8 decimals; JSON keeps floats exactly, so only log text needs this slack.
BPB_TOL = 1e-8



# --------------------------------------------------------------------------- helpers
def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _int(v) -> int | None:
    return int(v) if isinstance(v, int) and not isinstance(v, bool) else None


def _fmt_s(v: float) -> str:
    return f"{v:.1f} s"


def _last_event(events: list[dict], name: str) -> dict | None:
    return next((e for e in reversed(events) if e.get("event") == name), None)


def record_claim(view: RunView) -> bool:
    """Whether the run presents itself as a challenge record (its preset), so the challenge's figures apply."""
    return view.config.get("preset") in RECORD_PRESETS


def _manifest(view: RunView) -> tuple[Path | None, dict | None]:
    data_dir = view.report.get("data_dir")
    if not isinstance(data_dir, str):
        return None, None
    p = Path(data_dir) / "manifest.json"
    if not p.exists():
        return p, None
    try:
        return p, json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return p, {}


# --------------------------------------------------------------------------- size
def check_size(view: RunView, sub: Submission | None = None, track: Track | None = None) -> list[Check]:
    """Code + model bytes from the files on disk, against the cap and against every claim of them."""
    checks, rep, who = [], view.report, view.label
    sub_claims = sub.data if sub is not None and view is sub.view else {}

    model_disk = os.path.getsize(view.artifact) if view.artifact is not None else None
    model_claims = _claims(("report model_bytes", rep.get("model_bytes")),
                           ("submission bytes_model", sub_claims.get("bytes_model")))
    checks.append(_bytes_check("size.model", who, model_disk, model_claims, "artifact"))
    code_disk = os.path.getsize(view.code_file) if view.code_file is not None else None
    code_claims = _claims(("report code_bytes", rep.get("code_bytes")),
                          ("submission bytes_code", sub_claims.get("bytes_code")))
    code_check = _bytes_check("size.code", who, code_disk, code_claims, "train_gpt.py")
    if code_check.status == FAIL and code_claims.get("report code_bytes") not in (None, code_disk):
        # quantize measures the package it runs from; pack bundles the package as it is at pack time
        code_check.detail += " (report.json's figure is from quantize time: the packed code changed since)"
    checks.append(code_check)

    code = code_disk if code_disk is not None else _int(rep.get("code_bytes"))
    model = model_disk if model_disk is not None else _int(rep.get("model_bytes"))
    cap = _int(cfg_get(view.config, "quant.size_cap_bytes")) or CHALLENGE_CAP_BYTES
    if record_claim(view):
        cap = min(cap, CHALLENGE_CAP_BYTES)
    if sub is not None and track is not None and track.size_cap_bytes is not None:
        cap = min(cap, track.size_cap_bytes)  # the track the record is filed under decides
    if code is None or model is None:
        checks.append(Check(FAIL, "size.total", who, "no code or model size on disk or in report.json"))
        return checks
    total = code + model
    per_seed = _seed_result(sub, view.seed) if sub is not None else {}
    claims = _claims(("report artifact_bytes", rep.get("artifact_bytes")),
                     ("submission bytes_total", sub_claims.get("bytes_total")),
                     ("submission seed_results artifact_bytes", per_seed.get("artifact_bytes")))
    wrong = [f"{k} {v:,}" if isinstance(v, int) else f"{k} {v!r}" for k, v in claims.items() if v != total]
    detail = f"code {code:,} + model {model:,} = {total:,} bytes, cap {cap:,} (headroom {cap - total:,})"
    if total > cap:
        checks.append(Check(FAIL, "size.total", who, detail + ": OVER THE CAP"))
    elif wrong:
        checks.append(Check(FAIL, "size.total", who, detail + "; claimed " + ", ".join(wrong)))
    else:
        on_disk = "recomputed from disk" if code_disk is not None and model_disk is not None else "partly claimed"
        checks.append(Check(PASS, "size.total", who, f"{detail}; {on_disk}"))
    return checks


def _claims(*pairs: tuple[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in pairs if v is not None}


def _seed_result(sub: Submission, seed: int | None) -> dict:
    """submission.json's seed_results entry for `seed` ({} when absent or malformed)."""
    results = sub.data.get("seed_results")
    per = results.get(str(seed)) if isinstance(results, dict) else None
    return per if isinstance(per, dict) else {}


def _bytes_check(name: str, who: str, disk: int | None, claims: dict, what: str) -> Check:
    shown = ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v!r}" for k, v in claims.items())
    if disk is None:
        if not claims:
            return Check(FAIL, name, who, f"no {what} on disk and no claimed size")
        return Check(WARN, name, who, f"no {what} on disk to measure; {shown}")
    wrong = [k for k, v in claims.items() if v != disk]
    if wrong:
        return Check(FAIL, name, who, f"{what} is {disk:,} bytes on disk; {shown}")
    return Check(PASS, name, who, f"{what} {disk:,} bytes on disk" + (f" = {shown}" if shown else ""))


# --------------------------------------------------------------------------- time
def check_time(view: RunView, track: Track | None = None) -> list[Check]:
    """The track's two budgets (600 s each on the record track) from the report's timed phases, and what those
    phases leave out. A track without a wallclock budget reports the seconds and passes them."""
    rep, who = view.report, view.label
    track = track or _run_track(view)
    phases = rep.get("phase_seconds") or {}
    checks = []
    train_s = _num(rep.get("train_seconds", phases.get("train")))
    calib_s = _num(rep.get("calibration_seconds", phases.get("calibration"))) or 0.0
    if train_s is None:
        checks.append(Check(WARN, "time.train", who, "no train_seconds in report.json"))
    else:
        total = train_s + calib_s
        budget = track.train_budget_s
        ok = budget is None or total <= budget
        limit = (f"{'<=' if ok else '>'} {budget:.0f} s" if budget is not None
                 else f"(track {track.name}: no wallclock budget)")
        checks.append(Check(PASS if ok else FAIL, "time.train", who,
                            f"train {_fmt_s(train_s)} + calibration {_fmt_s(calib_s)} = {_fmt_s(total)} {limit}"))
    ttt_s = _num(rep.get("ttt_eval_time_s"))
    if ttt_s is None and "ttt_eval_s" in phases:
        ttt_s = float(phases.get("ttt_eval_s", 0.0)) + float(phases.get("ttt_global_sgd_s", 0.0))
    if ttt_s is None:
        checks.append(Check(WARN, "time.eval", who, "no TTT eval timing in report.json (run `pgolf eval --ttt`)"))
    else:
        budget = track.eval_budget_s
        ok = budget is None or ttt_s <= budget
        limit = (f"{'<=' if ok else '>'} {budget:.0f} s" if budget is not None
                 else f"(track {track.name}: no wallclock budget)")
        checks.append(Check(PASS if ok else FAIL, "time.eval", who, f"TTT eval {_fmt_s(ttt_s)} {limit}"))
    # Reviews accepted these outside the timers (#2014, #2139), but they are real seconds a reviewer may count.
    untimed = {"train compile warmup": phases.get("compile_warmup"), "TTT compile warmup":
               phases.get("ttt_compile_warmup_s")}
    other = {"artifact load": phases.get("eval_load_s"), "diagnostic eval": phases.get("eval_diagnostic_s")}
    warm = {k: float(v) for k, v in untimed.items() if _num(v)}
    rest = ", ".join(f"{k} {_fmt_s(float(v))}" for k, v in other.items() if _num(v) is not None)
    detail = ", ".join(f"{k} {_fmt_s(v)}" for k, v in warm.items()) or "no compile warmup"
    checks.append(Check(WARN if warm else PASS, "time.untimed", who,
                        ("excluded from the timers: " if warm else "") + detail + (f" (also untimed: {rest})"
                                                                                   if rest else "")))
    return checks


# --------------------------------------------------------------------------- legality
def check_legality(view: RunView) -> list[Check]:
    """C1/C4 of issue #1017 as far as the report shows them, and calibration inside the training clock."""
    rep, who = view.report, view.label
    checks = []
    mode = rep.get("peer_mode", cfg_get(view.config, "ttt.peer_mode"))
    peer_k = _int(rep.get("peer_k", cfg_get(view.config, "ttt.peer_k"))) or 1
    if mode in ("pr2139", "seed") or rep.get("peer_compliant") is False:  # "seed": its name before the rename
        checks.append(Check(FAIL, "legality.peer_mode", who,
                            f"peer_mode={mode}: #2139's ensemble is non-compliant (C1: a batch's documents see each "
                            "other; C4: targets scored twice); use peer_mode=causal"))
    else:
        checks.append(Check(PASS, "legality.peer_mode", who, f"peer_mode={mode}, peer_k={peer_k}"))

    tilt = (rep.get("ngram") or {}).get("ngram_tilt") or cfg_get(view.config, "eval.ngram_tilt") or "off"
    if tilt == "stream":
        checks.append(Check(FAIL, "legality.ngram_tilt", who,
                            "ngram_tilt=stream: #2135's n-gram statistics run in stream order while documents are "
                            "scored longest first, so hints use counts from documents not yet scored (C1/C3 under "
                            "the scoring order); use ngram_tilt=causal"))
    else:
        checks.append(Check(PASS, "legality.ngram_tilt", who, f"ngram_tilt={tilt}"))

    target = _int(rep.get("target_tokens"))
    coverage = _int(rep.get("coverage_tokens"))
    if _num(rep.get("val_bpb_ttt")) is None:
        checks.append(Check(PASS, "legality.coverage", who, "n/a: no TTT result in report.json"))
    elif mode in ("off", None) or peer_k <= 1:
        checks.append(Check(PASS, "legality.coverage", who,
                            f"ensemble off: own TTT scores each of {target if target is not None else '?'} targets"))
    elif coverage is None or target is None:
        checks.append(Check(FAIL, "legality.coverage", who, "ensemble on but coverage_tokens/target_tokens missing"))
    elif coverage != target:
        checks.append(Check(FAIL, "legality.coverage", who,
                            f"ensemble covers {coverage:,} of {target:,} targets: the headline is not one score per "
                            "target (C4)"))
    else:
        checks.append(Check(PASS, "legality.coverage", who, f"coverage {coverage:,} = target {target:,} tokens"))
    checks.append(_check_ttt_schedule(view))
    checks.append(_check_calibration(view))
    return checks


def _check_ttt_schedule(view: RunView) -> Check:
    """Static: the TTT score is a function of artifact, data and N; dynamic (or unrecorded): of timing too."""
    rep, who = view.report, view.label
    if _num(rep.get("val_bpb_ttt")) is None:
        return Check(PASS, "legality.ttt_schedule", who, "n/a: no TTT result in report.json")
    schedule = rep.get("ttt_schedule")
    ranks = rep.get("ttt_virtual_ranks")
    if schedule == "static":
        return Check(PASS, "legality.ttt_schedule", who,
                     f"static over {ranks} virtual ranks: the same score on any process count dividing {ranks}")
    return Check(WARN, "legality.ttt_schedule", who,
                 f"ttt schedule {schedule or 'not recorded (work stealing)'}: batches went to ranks by timing, so "
                 "the TTT score is not reproducible on another process count; use ttt.schedule=static")


def _check_calibration(view: RunView) -> Check:
    rep, who = view.report, view.label
    cap_s = _num(cfg_get(view.config, "train.max_wallclock_seconds")) or 0.0
    ev = _last_event(view.train_events, "calibration")
    train_s = _num(rep.get("train_seconds", ev.get("train_s") if ev else None))
    calib_s = _num(rep.get("calibration_seconds", ev.get("seconds") if ev else None))
    if train_s is None or calib_s is None:
        return Check(WARN, "legality.calibration", who, "no calibration timing in report.json or train.jsonl")
    total = train_s + calib_s
    if ev is not None and ev.get("within_wallclock") is False:
        return Check(FAIL, "legality.calibration", who,
                     f"train.jsonl: calibration ended at {_fmt_s(total)}, after the {cap_s:.0f} s training clock")
    if cap_s <= 0:
        return Check(WARN, "legality.calibration", who,
                     f"training clock uncapped (train.max_wallclock_seconds=0): calibration at {_fmt_s(total)} "
                     f"is only checked against the {CHALLENGE_TRAIN_S:.0f} s budget")
    if total > cap_s:
        return Check(FAIL, "legality.calibration", who,
                     f"train {_fmt_s(train_s)} + calibration {_fmt_s(calib_s)} = {_fmt_s(total)} > clock "
                     f"{cap_s:.0f} s: Hessians read training data after the clock ended")
    return Check(PASS, "legality.calibration", who,
                 f"calibration {_fmt_s(calib_s)} done at {_fmt_s(total)} <= clock {cap_s:.0f} s")


# --------------------------------------------------------------------------- data
def check_data(view: RunView) -> list[Check]:
    """Shard and target counts against the challenge's (record runs only), and the manifest's hash."""
    rep, who = view.report, view.label
    claim = record_claim(view)
    checks = []
    mpath, manifest = _manifest(view)
    claimed_sha = rep.get("data_manifest_sha256")
    if mpath is not None and mpath.parent.is_dir():
        # The same identity train recorded: the manifest's hash, or pgolf's own listing of the files
        # for a directory as the challenge's download leaves it.
        disk_sha = manifest_sha256(mpath.parent)
        where = mpath if mpath.exists() else f"{mpath.parent} (no manifest: every shard re-hashed)"
        if claimed_sha != disk_sha:
            checks.append(Check(FAIL, "data.manifest", who, f"{where} sha256 {disk_sha[:16]}... but report.json "
                                f"data_manifest_sha256 {str(claimed_sha)[:16]}...: the data changed since the run"))
        else:
            checks.append(Check(PASS, "data.manifest", who, f"{where} sha256 {disk_sha[:16]}... = report"))
    elif isinstance(claimed_sha, str):
        checks.append(Check(PASS, "data.manifest", who, f"report sha256 {claimed_sha[:16]}... (data dir not here, "
                            "not re-hashed)"))
    else:
        checks.append(Check(WARN, "data.manifest", who, "no data_manifest_sha256 in report.json"))

    setup = _last_event(view.train_events, "setup") or {}
    shards_log = _int(setup.get("train_shards"))
    shards_man = _int((manifest or {}).get("num_train_shards"))
    shards = shards_man if shards_man is not None else shards_log
    if shards_man is not None and shards_log is not None and shards_man != shards_log:
        checks.append(Check(FAIL, "data.train_shards", who, f"manifest lists {shards_man} training shards, "
                            f"train.jsonl trained on {shards_log}"))
    elif shards is None:
        checks.append(Check(WARN, "data.train_shards", who, "no shard count in the manifest or train.jsonl"))
    elif claim and shards != CHALLENGE_TRAIN_SHARDS:
        checks.append(Check(WARN, "data.train_shards", who,
                            f"{shards} training shards, the challenge export has {CHALLENGE_TRAIN_SHARDS} "
                            "(1499 is the #2127 train/val overlap fingerprint)"))
    else:
        checks.append(Check(PASS, "data.train_shards", who, f"{shards} training shards"))

    targets = _int(rep.get("target_tokens", setup.get("val_targets")))
    stream = _int((manifest or {}).get("num_val_tokens"))
    docs = _int((manifest or {}).get("num_val_docs"))
    figures = ", ".join(f"{k} {v:,}" for k, v in (("targets", targets), ("val stream tokens", stream),
                                                  ("val docs", docs)) if v is not None)
    if targets is None:
        checks.append(Check(WARN, "data.val_tokens", who, "no target_tokens in report.json or train.jsonl"))
    elif claim and (targets not in CHALLENGE_VAL_TARGETS or stream not in (None, CHALLENGE_VAL_STREAM_TOKENS)
                    or docs not in (None, CHALLENGE_VAL_DOCS)):
        checks.append(Check(WARN, "data.val_tokens", who, f"{figures}; the challenge's val set scores "
                            f"{CHALLENGE_VAL_TARGETS[0]:,} (or {CHALLENGE_VAL_TARGETS[1]:,}) targets over "
                            f"{CHALLENGE_VAL_DOCS:,} docs"))
    else:
        checks.append(Check(PASS, "data.val_tokens", who, figures))
    return checks


# --------------------------------------------------------------------------- artifact
def check_artifact(view: RunView) -> Check:
    if view.artifact is None:
        status = WARN if view.kind == "record" else FAIL
        return Check(status, "artifact.integrity", view.label, "no artifact on disk to read")
    st = view.artifact.stat()
    ok, text = _decode_artifact(str(view.artifact.resolve()), st.st_size, st.st_mtime_ns)
    return Check(PASS if ok else FAIL, "artifact.integrity", view.label, text)


@functools.lru_cache(maxsize=16)
def _decode_artifact(path: str, size_bytes: int, mtime_ns: int) -> tuple[bool, str]:
    """Decode once per file version: a run and the record packed from it share one artifact."""

    try:
        qstate = read_artifact(path)
    except ArtifactError as e:
        return False, str(e)
    return True, f"{Path(path).name}: {FORMAT_TAG}, checksum ok, {len(qstate['tensors'])} tensors decoded"


# --------------------------------------------------------------------------- consistency of one run
_LOG_LINES = {
    "val_bpb_ttt_ensemble": re.compile(r"^quantized_ttt_phased val_loss:([\d.]+) val_bpb:([\d.]+)"),
    "val_bpb_roundtrip": re.compile(r"^diagnostic quantized val_loss:([\d.]+) val_bpb:([\d.]+)"),
}


def check_logs(view: RunView) -> list[Check]:
    """report.json's figures equal the last matching log lines, and config.json equals the report's config."""
    rep, who = view.report, view.label
    checks = []
    texts = [e.get("text", "") for e in view.eval_events if e.get("event") == "info"]
    found = []
    for key, rx in _LOG_LINES.items():
        value = _num(rep.get(key))
        if value is None:
            continue
        logged = [float(m.group(2)) for t in texts for m in [rx.match(t.strip())] if m]
        if not logged:
            checks.append(Check(WARN, "consistency.log", who, f"report {key} {value:.8f} has no line in eval.jsonl"))
        elif abs(logged[-1] - value) > BPB_TOL:
            checks.append(Check(FAIL, "consistency.log", who,
                                f"report {key} {value:.8f} but eval.jsonl's last line says {logged[-1]:.8f}"))
        else:
            found.append(f"{key} {value:.8f}")
    done = _last_event(view.train_events, "done")
    prequant = _num(rep.get("val_bpb_prequant"))
    if done is not None and prequant is not None:
        # train.jsonl of runs made before the report key was renamed still says val_bpb
        logged = _num(done.get("val_bpb_prequant", done.get("val_bpb")))
        if logged != prequant:
            checks.append(Check(FAIL, "consistency.log", who, f"report val_bpb_prequant {prequant} but "
                                f"train.jsonl's done event says {logged}"))
        else:
            found.append(f"val_bpb_prequant {prequant:.8f}")
    if not any(c.status != PASS for c in checks):
        checks.append(Check(PASS if found else WARN, "consistency.log", who,
                            ("report = logs: " + ", ".join(found)) if found else "no result lines to compare"))
    if view.config_json is not None and isinstance(rep.get("config"), dict):
        a, b = flatten(view.config_json), flatten(rep["config"])
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        checks.append(Check(FAIL if diff else PASS, "consistency.config_json", who,
                            f"config.json differs from report.json's config in {', '.join(diff[:5])}" if diff
                            else "config.json = report.json config"))
    return checks


# --------------------------------------------------------------------------- consistency of a submission
def submission_views(sub: Submission, runs: list[RunView]) -> list[RunView]:
    """The evidence for the listed seeds: the record's own report, per-seed subfolders, given run directories.

    A run directory and the record packed from it hold the same run; that counts once. Two different runs
    of one seed both stay, so the group check can report the seed as run twice (a picked seed).
    """
    listed = {s for s in sub.data.get("seeds") or [] if isinstance(s, int)}
    pool = ([sub.view] if sub.view is not None and sub.view.report else []) + sub.extra_views + runs
    out, seen = [], set()
    for v in pool:
        if v.seed not in listed:
            continue
        key = (v.seed, v.config_hash, json.dumps(headline(v.report)), v.report.get("train_seconds"))
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out


def check_submission(sub: Submission, runs: list[RunView]) -> list[Check]:
    """submission.json against the reports of its seeds, its own seed claims and its README."""
    data, who = sub.data, str(sub.path)
    checks = []
    seeds = data.get("seeds")
    if not isinstance(seeds, list) or not seeds:
        return [Check(FAIL, "consistency.seeds", who, "submission.json has no 'seeds' list")]
    views = submission_views(sub, runs)
    by_seed: dict[int, RunView] = {}
    for v in views:
        by_seed.setdefault(v.seed, v)
    missing = [s for s in seeds if not isinstance(s, int) or s not in by_seed]
    dupes = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
    results = data.get("seed_results")
    result_keys = sorted(results) if isinstance(results, dict) else None
    problems = []
    if missing:
        problems.append(f"no report for seed(s) {missing}")
    if dupes:
        problems.append(f"seed(s) {dupes} listed twice")
    if result_keys is not None and result_keys != sorted(str(s) for s in seeds):
        problems.append(f"seed_results has {result_keys}, seeds lists {seeds}")
    checks.append(Check(FAIL if problems else PASS, "consistency.seeds", who,
                        "; ".join(problems) if problems else f"seeds {seeds}: a report for each"))

    checks.append(seed_claims_check(data, sub.readme, len(seeds), who))

    present = [by_seed[s] for s in seeds if isinstance(s, int) and s in by_seed]
    checks.append(_numbers_check(sub, present))
    checks.append(_seed_logs_check(sub, present))
    checks += check_group(views, who)
    return checks


def _numbers_check(sub: Submission, views: list[RunView]) -> Check:
    """val_bpb / val_loss of submission.json (and per seed) equal the reports' headline figures.

    With several seeds the headline is their mean, as the records report it.
    """
    data, who = sub.data, str(sub.path)
    wrong, shown = [], []
    bpbs, losses = [], []
    for v in views:
        head = headline(v.report)
        if head is None:
            wrong.append(f"seed {v.seed}: no headline bpb in {v.label}/report.json")
            continue
        bpbs.append(head[1])
        losses.append(_num(v.report.get(head[0].replace("bpb", "loss"))))
        per_bpb = _num(_seed_result(sub, v.seed).get("val_bpb"))
        if per_bpb is not None and abs(per_bpb - head[1]) > BPB_TOL:
            wrong.append(f"seed_results[{v.seed}].val_bpb {per_bpb} != report {head[0]} {head[1]}")
    if views and len(bpbs) == len(views):
        what = "report" if len(views) == 1 else f"mean of {len(views)} seeds"
        for key, vals in (("val_bpb", bpbs), ("val_loss", losses)):
            claim = _num(data.get(key))
            if claim is None:
                if key == "val_bpb":
                    wrong.append("submission.json has no val_bpb")
                continue
            if any(x is None for x in vals):
                wrong.append(f"submission {key} {claim}: a report lacks it")
                continue
            mean = math.fsum(vals) / len(vals)
            if abs(claim - mean) > BPB_TOL:
                wrong.append(f"submission {key} {claim} != {what} {mean:.8f}")
            else:
                shown.append(f"{key} {claim:.8f}")
    if wrong:
        return Check(FAIL, "consistency.numbers", who, "; ".join(wrong))
    return Check(PASS, "consistency.numbers", who, "submission = reports: " + ", ".join(shown))


def _seed_logs_check(sub: Submission, views: list[RunView]) -> Check:
    """Each seed's text log (train_seed<N>.log) is there and scores what its report does."""
    who = str(sub.path)
    missing, wrong, shown = [], [], []
    for v in views:
        path = sub.path / f"train_seed{v.seed}.log"
        if not path.exists():
            missing.append(path.name)
            continue
        log = read_log(path)
        head = headline(v.report)
        score = log.score
        if head is None or score is None or abs(score[1] - head[1]) > BPB_TOL:
            wrong.append(f"{path.name} scores {score} but the report {head}")
        else:
            shown.append(path.name)
    if wrong:
        return Check(FAIL, "consistency.seed_logs", who, "; ".join(wrong))
    if missing:
        return Check(WARN, "consistency.seed_logs", who, f"no text log {', '.join(missing)} (packed by an older "
                     "pgolf?)")
    return Check(PASS, "consistency.seed_logs", who, f"{', '.join(shown)}: complete, scores = reports")


def check_group(views: list[RunView], who: str) -> list[Check]:
    """Seeds of one submission: one config (seed fields aside), one data manifest, no seed run twice."""
    if len(views) < 2:
        return []
    checks = []
    hashes = {v.config_hash for v in views}
    if None in hashes or len(hashes) > 1:

        base = flatten(views[0].config)
        diffs = set()
        for v in views[1:]:
            other = flatten(v.config)
            diffs |= {k for k in set(base) | set(other) if base.get(k) != other.get(k) and k not in SEED_FIELDS}
        checks.append(Check(FAIL, "consistency.config_hash", who,
                            f"{len(hashes)} different configs across the seeds (differ in "
                            f"{', '.join(sorted(diffs)[:5]) or 'missing config'})"))
    else:
        checks.append(Check(PASS, "consistency.config_hash", who,
                            f"one config hash {hashes.pop()} across {len(views)} runs"))
    code = {v.report.get("code_raw_bytes") for v in views} - {None}
    if len(code) > 1:
        # The bundle's raw source size: the library code that quantized each seed (the config aside).
        checks.append(Check(FAIL, "consistency.code_hash", who,
                            f"seeds ran different code: library source {sorted(code)} bytes"))
    elif code:
        checks.append(Check(PASS, "consistency.code_hash", who, f"one library source ({code.pop():,} bytes) across "
                            f"{len(views)} runs"))
    shas = [v.report.get("data_manifest_sha256") for v in views]
    if any(not isinstance(s, str) for s in shas):
        checks.append(Check(WARN, "data.manifest_equal", who, "a report lacks data_manifest_sha256"))
    elif len(set(shas)) > 1:
        checks.append(Check(FAIL, "data.manifest_equal", who,
                            f"{len(set(shas))} different data manifests across the runs"))
    else:
        checks.append(Check(PASS, "data.manifest_equal", who, f"one data manifest {shas[0][:16]}..."))
    seeds = [v.seed for v in views]
    dup = sorted({s for s in seeds if s is not None and seeds.count(s) > 1})
    checks.append(Check(WARN if dup else PASS, "consistency.distinct_seeds", who,
                        f"seed(s) {dup} run more than once" if dup else f"seeds {seeds}"))
    return checks


# --------------------------------------------------------------------------- driver
def _run_track(view: RunView) -> Track:
    """A run directory's track, as its config suggests it (16 MB cap + 600 s clock = the record track)."""
    cap = _int(cfg_get(view.config, "quant.size_cap_bytes")) or CHALLENGE_CAP_BYTES
    clock = _num(cfg_get(view.config, "train.max_wallclock_seconds"))
    return guess_track(cap, clock if clock is not None else CHALLENGE_TRAIN_S)


def audit_view(view: RunView, sub: Submission | None = None) -> list[Check]:
    """Every per-run check of one run directory or record folder."""
    track = track_of_record(sub.data, sub.path)[0] if sub is not None else _run_track(view)
    checks = check_size(view, sub, track) + check_time(view, track) + check_legality(view) + check_data(view)
    checks += check_logs(view)
    checks.append(check_artifact(view))
    return checks


def audit_paths(paths: list[str | Path]) -> list[Check]:
    """Every check for the given run directories and record folders, in input order per submission.

    A record folder whose only evidence is its text logs (the challenge's format) is audited from them
    (`pgolf.submission.audit_logs`); every input is read before any check runs, so bad input stops the
    audit with one line."""
    by_logs = [Path(p) for p in paths if (Path(p) / "submission.json").exists() and not is_run_record(Path(p))]
    log_records = [audit_logs.load_log_record(p) for p in by_logs]
    runs, subs = load_inputs([p for p in paths if Path(p) not in by_logs])
    checks: list[Check] = []
    for rec in log_records:
        checks += audit_logs.audit_log_record(rec)
    listed: set[int] = set()
    for sub in subs:
        track, source = track_of_record(sub.data, sub.path)
        checks.append(Check(PASS, "track", str(sub.path), f"{track.name} ({source})"))
        for view in ([sub.view] if sub.view is not None else []) + sub.extra_views:
            checks += audit_view(view, sub)
        checks += check_submission(sub, runs)
        listed |= {s for s in sub.data.get("seeds") or [] if isinstance(s, int)}
    for run in runs:
        checks += audit_view(run)
    if subs:
        checks += [Check(WARN, "consistency.seeds", r.label, f"seed {r.seed} is in no audited submission.json")
                   for r in runs if r.seed not in listed]
    else:
        checks += check_group(runs, "runs")
    return checks


def significance_checks(paths: list[str | Path], baseline, baseline_name: str) -> list[Check]:
    """One `significance` check per audited record (or one for a group of runs) against a named baseline.

    On the record track: PASS at the README's bar, WARN when only the maintainers' practice bar (p < 0.25)
    is met, FAIL otherwise; elsewhere the figures are stated and pass (no bar applies)."""
    from pgolf.submission import significance

    groups: list[tuple[str, list, bool]] = []
    records = [Path(p) for p in paths if (Path(p) / "submission.json").exists()]
    for rec in records:
        data = json.loads((rec / "submission.json").read_text())
        groups.append((str(rec), significance.read_results(str(rec)), track_of_record(data, rec)[0].name
                       == "10min_16mb"))
    runs = [str(p) for p in paths if Path(p) not in records]
    if runs and not records:
        groups.append(("runs", significance.read_groups(runs), False))
    checks = []
    for who, candidate, record_track in groups:
        c = significance.comparison(candidate, baseline, baseline_name)
        text = " | ".join(significance.comparison_lines(c))
        if c["p_value"] is None:
            status = WARN if record_track else PASS
        elif not record_track or c["passes_bar"]:
            status = PASS
        else:
            status = WARN if c.get("passes_practice") else FAIL
        checks.append(Check(status, "significance", who, text))
    return checks


def format_json(checks: list[Check]) -> str:
    """The checks for machines: every check's status, name, subject and detail, and the counts."""
    counts = {s: sum(c.status == s for c in checks) for s in (PASS, WARN, FAIL)}
    return json.dumps({"checks": [{"status": c.status, "check": c.name, "subject": c.subject, "detail": c.detail}
                                  for c in checks], "counts": counts, "passed": counts[FAIL] == 0}, indent=2)


def format_checks(checks: list[Check]) -> str:
    w_name = max([len("CHECK")] + [len(c.name) for c in checks])
    w_subj = max([len("SUBJECT")] + [len(c.subject) for c in checks])
    lines = [f"{'STATUS':<6}  {'CHECK':<{w_name}}  {'SUBJECT':<{w_subj}}  DETAIL"]
    lines += [f"{c.status:<6}  {c.name:<{w_name}}  {c.subject:<{w_subj}}  {c.detail}" for c in checks]
    counts = {s: sum(c.status == s for c in checks) for s in (PASS, WARN, FAIL)}
    lines.append(f"{len(checks)} checks: {counts[PASS]} pass, {counts[WARN]} warn, {counts[FAIL]} fail")
    return "\n".join(lines)
