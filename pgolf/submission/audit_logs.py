"""`pgolf audit` of a record folder whose evidence is its text logs: the challenge's own format.

An upstream record folder holds `train_gpt.py` (the counted code), `submission.json`,
a README and one text log per seed; no report.json, no artifact. Everything the
audit holds it to comes from those files:

    size         train_gpt.py's bytes on disk + the model bytes each log printed, against
                 the track's cap and against submission.json's byte figures
    time         each log's training clock and evaluation timer against the track's budgets
    seeds        one log per listed seed, as many as submission.json claims (three_seeds, ...)
    numbers      submission.json's val_bpb / seed_results equal the logs' final figures
    same run     one configuration (hyperparameters without seed and paths) and one source across seeds
    data         CaseOps runs: 80 training shards and the 50,000-document val set (issue #2127's
                 leak shows as 1499 shards or a 10,000-document val set)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from pgolf.errors import DataError
from pgolf.submission.audit_inputs import FAIL, PASS, WARN, Check, read_submission_json, seed_claims_check
from pgolf.submission.tracks import Track, track_of_record
from pgolf.submission.upstream_log import SeedLog, read_log, record_logs

CHALLENGE_TRAIN_SHARDS = 80
CHALLENGE_VAL_DOCS = 50_000
CHALLENGE_VAL_TARGETS = (47_853_343, 47_851_520)
LEAK_TRAIN_SHARDS = 1499
"""What the CaseOps prep script leaves with its 10,000-document val default (issue #2127)."""
BPB_TOL = 1e-8


@dataclass
class LogRecord:
    path: Path
    data: dict
    readme: str | None
    logs: list[SeedLog]
    code_file: Path | None
    track: Track
    track_source: str


def load_log_record(path: Path) -> LogRecord:
    """A record folder read from its logs; DataError for a folder without logs or with a log cut off."""
    data = read_submission_json(path)
    files = record_logs(path)
    if not files:
        raise DataError(f"{path}: a record folder without logs (no *.log or logs/*.txt): nothing to audit")
    logs = [read_log(p) for p in files]
    readme = path / "README.md"
    code = path / "train_gpt.py"
    track, source = track_of_record(data, path)
    return LogRecord(path, data, readme.read_text(errors="replace") if readme.exists() else None, logs,
                     code if code.exists() else None, track, source)


def _decimals(x: float) -> int:
    text = repr(float(x))
    return len(text.split(".")[1]) if "." in text and "e" not in text else 8


def agrees(claim: float, value: float) -> bool:
    """A claimed figure equals a logged one up to the claim's own rounding (1.0575 stands for 1.05749056)."""
    return abs(claim - value) <= max(BPB_TOL, 0.5 * 10.0 ** -_decimals(claim) + 1e-12)


def _seed_result(data: dict, seed) -> dict:
    results = data.get("seed_results")
    per = results.get(str(seed)) if isinstance(results, dict) else None
    return per if isinstance(per, dict) else {}


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _where(log: SeedLog) -> str:
    return str(log.path)


# --------------------------------------------------------------------------- size
def check_size(rec: LogRecord) -> list[Check]:
    checks = []
    who = str(rec.path)
    code_disk = os.path.getsize(rec.code_file) if rec.code_file is not None else None
    claim = rec.data.get("bytes_code")
    if code_disk is None:
        checks.append(Check(FAIL, "size.code", who, "no train_gpt.py in the folder: the counted code is missing"))
    elif isinstance(claim, int) and claim != code_disk:
        checks.append(Check(FAIL, "size.code", who, f"train_gpt.py is {code_disk:,} bytes on disk; submission.json "
                            f"bytes_code {claim:,}"))
    else:
        logged = sorted({lg.code_bytes for lg in rec.logs if lg.code_bytes is not None})
        note = f"; the logs print code {', '.join(f'{b:,}' for b in logged)}" if logged else ""
        checks.append(Check(PASS, "size.code", who, f"train_gpt.py {code_disk:,} bytes on disk{note}"))
    cap = rec.track.size_cap_bytes
    for lg in rec.logs:
        totals = {}
        if lg.artifact_bytes is not None:
            totals["logged total"] = lg.artifact_bytes
        if lg.model_bytes is not None and code_disk is not None:
            totals["train_gpt.py + logged model"] = code_disk + lg.model_bytes
        if not totals:
            checks.append(Check(WARN, "size.total", _where(lg), "the log prints no submission or model size"))
            continue
        shown = ", ".join(f"{k} {v:,}" for k, v in totals.items())
        claimed = _seed_result(rec.data, lg.seed).get("artifact_bytes")
        worst = max(totals.values())
        if cap is not None and worst > cap:
            checks.append(Check(FAIL, "size.total", _where(lg), f"{shown} bytes > cap {cap:,}: OVER THE CAP"))
        elif isinstance(claimed, int) and lg.artifact_bytes is not None and claimed != lg.artifact_bytes:
            checks.append(Check(FAIL, "size.total", _where(lg), f"{shown} bytes; submission.json seed_results"
                                f"[{lg.seed}].artifact_bytes {claimed:,}"))
        else:
            room = f", cap {cap:,} (headroom {cap - worst:,})" if cap is not None else ", no cap on this track"
            checks.append(Check(PASS, "size.total", _where(lg), f"{shown} bytes{room}"))
    return checks


# --------------------------------------------------------------------------- time
def _budget_check(name: str, who: str, what: str, seconds: float | None, budget: float | None, track: Track) -> Check:
    if seconds is None:
        return Check(WARN, name, who, f"the log prints no {what}")
    if budget is None:
        return Check(PASS, name, who, f"{what} {seconds:.1f} s; track {track.name} has no wallclock budget")
    ok = seconds <= budget
    return Check(PASS if ok else FAIL, name, who, f"{what} {seconds:.1f} s {'<=' if ok else '>'} {budget:.0f} s")


def check_time(rec: LogRecord) -> list[Check]:
    checks = []
    for lg in rec.logs:
        steps = f" ({lg.steps:,} steps)" if lg.steps is not None else ""
        checks.append(_budget_check("time.train", _where(lg), f"training clock{steps}", lg.train_seconds,
                                    rec.track.train_budget_s, rec.track))
        checks.append(_budget_check("time.eval", _where(lg), "evaluation timer", lg.eval_seconds,
                                    rec.track.eval_budget_s, rec.track))
    return checks


# --------------------------------------------------------------------------- seeds and numbers
def listed_seeds(data: dict) -> list | None:
    seeds = data.get("seeds")
    if isinstance(seeds, list):
        return seeds
    results = data.get("seed_results")
    if isinstance(results, dict):
        return [int(k) if str(k).isdigit() else k for k in results]
    return None


def check_seeds(rec: LogRecord) -> list[Check]:
    """One log per listed seed, no log of an unlisted seed, and as many seeds as any claim says."""
    who = str(rec.path)
    logged = [lg.seed for lg in rec.logs]
    listed = listed_seeds(rec.data)
    checks = []
    problems = []
    if listed is None:
        listed = logged
        source = "the logs (submission.json lists no seeds)"
    else:
        source = "submission.json"
    no_log = [s for s in listed if s not in logged]
    unlisted = [s for s in logged if s not in listed]
    twice = sorted({s for s in logged if logged.count(s) > 1}, key=str)
    if no_log:
        problems.append(f"seed(s) {no_log} listed but no log ({len(rec.logs)} log(s) for {len(listed)} seed(s))")
    if unlisted:
        problems.append(f"log(s) of seed(s) {unlisted} not listed in submission.json")
    if twice:
        problems.append(f"seed(s) {twice} logged twice")
    checks.append(Check(FAIL if problems else PASS, "consistency.seeds", who,
                        "; ".join(problems) if problems else f"seeds {listed} from {source}: a log for each"))
    checks.append(seed_claims_check(rec.data, rec.readme, len(listed), who))
    return checks


def check_numbers(rec: LogRecord) -> Check:
    """Every figure of submission.json that has a source agrees with it: per seed with its log, the headline
    with the mean of the per-seed figures (those of the logs where they exist)."""
    who, data = str(rec.path), rec.data
    wrong, per_seed = [], {}
    for lg in rec.logs:
        score = lg.score
        per_seed[lg.seed] = score[1]
        claim = _num(_seed_result(data, lg.seed).get("val_bpb"))
        if claim is not None and not agrees(claim, score[1]):
            wrong.append(f"seed_results[{lg.seed}].val_bpb {claim} != {lg.path.name} {score[0]} {score[1]:.8f}")
    listed = listed_seeds(data) or list(per_seed)
    values = []
    for s in listed:
        v = per_seed.get(s, _num(_seed_result(data, s).get("val_bpb")))
        if v is not None:
            values.append(v)
    head = data["val_bpb"]
    if values and len(values) == len(listed):
        m = math.fsum(values) / len(values)
        if not agrees(head, m):
            wrong.append(f"val_bpb {head} != mean {m:.8f} of {len(values)} seed(s)")
    elif not values:
        wrong.append(f"val_bpb {head}: no log or seed_results figure to check it against")
    std = _num(data.get("val_bpb_std"))
    if std is not None and len(values) > 1 and len(values) == len(listed):
        m = math.fsum(values) / len(values)
        sd = math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1))
        if abs(std - sd) > max(1e-6, 0.5 * 10.0 ** -_decimals(std)):
            wrong.append(f"val_bpb_std {std} != sample std {sd:.8f}")
    if wrong:
        return Check(FAIL, "consistency.numbers", who, "; ".join(wrong))
    return Check(PASS, "consistency.numbers", who, f"val_bpb {head} = mean of {len(values)} seed(s); "
                 f"{len(per_seed)} log figure(s) match seed_results")


def check_same_run(rec: LogRecord) -> list[Check]:
    who = str(rec.path)
    checks = []
    hashes = [lg.config_hash for lg in rec.logs]
    base = max(rec.logs, key=lambda lg: hashes.count(lg.config_hash))  # the odd seed out is the one named
    diffs: list[str] = []
    for lg in rec.logs:
        a, b = base.config, lg.config
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                diffs.append(f"{lg.path.name} {k}={b.get(k)!r} vs {a.get(k)!r}")
    if not base.hyperparameters:
        checks.append(Check(WARN, "consistency.config_hash", who, "the logs carry no hyperparameter block"))
    elif diffs:
        checks.append(Check(FAIL, "consistency.config_hash", who, f"seeds ran different configurations: "
                            f"{'; '.join(diffs[:3])}{f' (+{len(diffs) - 3} more)' if len(diffs) > 3 else ''}"))
    else:
        checks.append(Check(PASS, "consistency.config_hash", who,
                            f"one config hash {base.config_hash} across {len(rec.logs)} log(s)"))
    sources = {lg.source_sha256 for lg in rec.logs}
    raw = {lg.code_raw_bytes for lg in rec.logs if lg.code_raw_bytes is not None}
    if len(sources - {None}) > 1 or len(raw) > 1:
        what = (f"{len(sources - {None})} different embedded sources" if len(sources - {None}) > 1
                else f"source sizes {sorted(raw)}")
        checks.append(Check(FAIL, "consistency.code_hash", who, f"seeds ran different code: {what}"))
    elif sources == {None} and not raw:
        checks.append(Check(WARN, "consistency.code_hash", who, "the logs embed no source and print no code size"))
    else:
        sha = next(iter(sources - {None}), None)
        shown = f"source sha256 {sha[:16]}..." if sha else f"source {next(iter(raw)):,} bytes"
        checks.append(Check(PASS, "consistency.code_hash", who, f"one {shown} across {len(rec.logs)} log(s)"))
    return checks


# --------------------------------------------------------------------------- data
def check_data(rec: LogRecord) -> list[Check]:
    checks = []
    for lg in rec.logs:
        who = _where(lg)
        if not lg.caseops:
            shards = "?" if lg.train_shards is None else lg.train_shards
            checks.append(Check(PASS, "data.train_shards", who, f"{shards} training shards (not CaseOps: no "
                                "canonical count to hold it to)"))
            continue
        if lg.train_shards is None:
            checks.append(Check(WARN, "data.train_shards", who, "CaseOps run; the log prints no train_shards"))
        elif lg.train_shards != CHALLENGE_TRAIN_SHARDS:
            leak = " (the #2127 train/val overlap fingerprint)" if lg.train_shards == LEAK_TRAIN_SHARDS else ""
            checks.append(Check(FAIL, "data.train_shards", who, f"CaseOps run on {lg.train_shards} training shards, "
                                f"the canonical export has {CHALLENGE_TRAIN_SHARDS}{leak}"))
        else:
            checks.append(Check(PASS, "data.train_shards", who, f"{lg.train_shards} training shards"))
        figures = {k: v for k, v in (("val docs", lg.val_docs), ("val_tokens", lg.val_tokens)) if v is not None}
        shown = ", ".join(f"{k} {v:,}" for k, v in figures.items())
        bad = []
        if lg.val_docs is not None and lg.val_docs != CHALLENGE_VAL_DOCS:
            bad.append(f"{lg.val_docs:,} val docs, not {CHALLENGE_VAL_DOCS:,}")
        if lg.val_tokens is not None and lg.val_tokens not in CHALLENGE_VAL_TARGETS:
            bad.append(f"val_tokens {lg.val_tokens:,}, not {CHALLENGE_VAL_TARGETS[0]:,} or "
                       f"{CHALLENGE_VAL_TARGETS[1]:,}")
        if not figures:
            checks.append(Check(WARN, "data.val_docs", who, "CaseOps run; the log prints no val docs or val_tokens"))
        elif bad:
            checks.append(Check(FAIL, "data.val_docs", who, "; ".join(bad) + ": not the canonical val split "
                                "(a 10,000-document split leaks val docs into training, #2127)"))
        else:
            checks.append(Check(PASS, "data.val_docs", who, shown))
    return checks


def log_summary(lg: SeedLog) -> Check:
    """What one seed's log says, for comparing seeds by eye: steps, val_bpb per stage, hashes."""
    steps = f"{lg.steps:,}/{lg.iterations:,} steps" if lg.steps is not None and lg.iterations else "steps ?"
    stages = " -> ".join(f"{s} {lg.bpb[s]:.8f}" for s in ("pre_ema", "prequant", "quantized", "ttt", "ttt_ensemble")
                         if s in lg.bpb)
    source = f", source {lg.source_sha256[:12]}" if lg.source_sha256 else ""
    return Check(PASS, "log.result", _where(lg), f"seed {lg.seed}: {steps}; val_bpb {stages}; score "
                 f"{lg.score[0]}; config {lg.config_hash[:12]}{source}")


def audit_log_record(rec: LogRecord) -> list[Check]:
    """Every check of a log-evidenced record folder."""
    checks = [Check(PASS, "track", str(rec.path), f"{rec.track.name} ({rec.track_source}): "
                    + _limits(rec.track))]
    checks += [log_summary(lg) for lg in rec.logs]
    checks += check_size(rec) + check_time(rec)
    checks += check_seeds(rec)
    checks.append(check_numbers(rec))
    checks += check_same_run(rec) + check_data(rec)
    return checks


def _limits(track: Track) -> str:
    cap = f"cap {track.size_cap_bytes:,} bytes" if track.size_cap_bytes else "no size cap"
    if track.train_budget_s is None:
        return f"{cap}, no wallclock budget"
    return f"{cap}, train {track.train_budget_s:.0f} s, eval {track.eval_budget_s:.0f} s"
