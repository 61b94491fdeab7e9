"""Is a candidate's per-seed bpb significantly lower than a baseline's? (`pgolf significance`)

The challenge asks a new record to beat the frontier by >= 0.005 nats "at
p < 0.01" over several seeds of one configuration; in practice the maintainers
accepted rows at p < 0.25 (PR #1902's chronological progression cutoff), and
participants computed t-tests by hand. This module makes both bars one command:

- Welch's unequal-variance t-test, one-sided (H1: candidate mean < baseline
  mean), with the Student-t CDF computed here from the regularized incomplete
  beta function (Lentz's continued fraction; no scipy). With a single baseline
  value (a published mean) it is a one-sample t-test against that value.
- The strict bar shifts H0 by the required improvement: H0 is
  "baseline - candidate <= min_delta", so p < 0.01 means the candidate beat the
  baseline by at least 0.005 nats with 99% confidence. Nats per token convert to
  bpb through bytes per token: bpb = nats / (ln 2 * bytes_per_token).
- Same-config evidence: every report of a group must carry the same config hash
  (the resolved RunConfig without the seed fields); mixed configs are refused.

Reproducing the leaderboard's "PR #2014: p=0.011 vs PR #1953": Welch one-sided
gives p = 0.0202 (df 3.92) and a one-sample test against #1953's mean 0.0288
(df 2). 0.011 is a *paired* two-sided t-test over the seeds in listing order
(p = 0.0107, df 2), which `paired_t_test` reproduces; it pairs unrelated runs
(#2014 seeds 42/314/0 with #1953 seeds 42/0/1234), so it is not used for verdicts,
but it is printed beside them as the test the maintainers' published p-values use.

Inputs are read alike from plain numbers, pgolf runs (report.json), record folders
(pgolf's, with per-seed reports, or upstream ones, from their text logs or, without
logs, their submission.json seed_results) and single text logs (`read_results`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pgolf.errors import ConfigError, DataError
from pgolf.rundir import Report
from pgolf.submission.upstream_log import read_log, record_logs

RESULT_KEYS = ("val_bpb_ttt_ensemble", "val_bpb_ttt", "val_bpb_roundtrip")
"""The figures a report may contribute; the one it does is its headline (`Report.headline`: the last stage
reached, never a non-compliant ensemble)."""

SEED_FIELDS = ("train.seed", "ttt.peer_seed")
"""Config fields that are meant to differ between seeds; left out of the config hash."""

RECORD_NATS_PER_BPB = 2.31418732 / 1.05749056
"""ln2 * bytes/token of the CaseOps SP8192 val set (#2139 LOG: val_loss / val_bpb, about 3.157 bytes/token).
Used to convert nats to bpb when the inputs are plain numbers."""

STRICT_P = 0.01
PRACTICE_P = 0.25
BAR = "the README's bar: >= 0.005 nats better at p < 0.01"
VERDICT_TEST = "Welch's t-test, one-sided (H1: candidate lower), H0 shifted by the bar"
MAINTAINERS_TEST = "paired t-test, two-sided, seeds in listing order (reproduces the leaderboard's p-values)"


# --------------------------------------------------------------------------- the t distribution
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of I_x(a, b) (modified Lentz), for x < (a+1)/(a+b+2)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        # Even step: m(b-m)x / ((a+2m-1)(a+2m)); odd step: -(a+m)(a+b+m)x / ((a+2m)(a+2m+1)).
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= c * d
        if abs(c * d - 1.0) < eps:
            return h
    raise AssertionError(f"incomplete beta did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    assert a > 0 and b > 0 and 0.0 <= x <= 1.0, (a, b, x)
    if x == 0.0 or x == 1.0:
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    # The fraction converges fast only below the mean; use I_x(a,b) = 1 - I_{1-x}(b,a) above it.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` (> 0, may be fractional) degrees of freedom."""
    assert df > 0, df
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t > 0 else tail


# --------------------------------------------------------------------------- tests
@dataclass(frozen=True)
class TTest:
    test: str
    """'welch' | 'one-sample' | 'paired'."""
    mean_diff: float
    """candidate mean - baseline mean - shift (negative = candidate better)."""
    t: float
    df: float
    p_value: float
    """One-sided P(candidate mean >= baseline mean - shift) unless the test says two-sided."""


def _mean_var(xs: Sequence[float]) -> tuple[float, float]:
    n = len(xs)
    mean = math.fsum(xs) / n
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1) if n > 1 else 0.0
    return mean, var


def welch_t_test(candidate: Sequence[float], baseline: Sequence[float], shift: float = 0.0) -> TTest:
    """One-sided Welch test of H1: mean(candidate) < mean(baseline) - shift.

    One baseline value is treated as a known constant (one-sample test, df = n-1).
    """
    if len(candidate) < 2:
        raise DataError(f"candidate: need at least 2 seeds for a t-test, got {len(candidate)}")
    if not baseline:
        raise DataError("baseline: no values")
    mc, vc = _mean_var(candidate)
    mb, vb = _mean_var(baseline)
    nc, nb = len(candidate), len(baseline)
    diff = mc - mb + shift
    se2_c = vc / nc
    se2_b = vb / nb if nb > 1 else 0.0
    se = math.sqrt(se2_c + se2_b)
    if nb == 1:
        test, df = "one-sample", float(nc - 1)
    else:
        test = "welch"
        # Welch-Satterthwaite; both variances zero leaves df undefined: fall back to the pooled df.
        denom = (se2_c ** 2 / (nc - 1) if nc > 1 else 0.0) + se2_b ** 2 / (nb - 1)
        df = (se2_c + se2_b) ** 2 / denom if denom > 0 else float(nc + nb - 2)
    if se == 0.0:
        t = -math.inf if diff < 0 else (math.inf if diff > 0 else 0.0)
        p = 0.0 if diff < 0 else (1.0 if diff > 0 else 0.5)
        return TTest(test, diff, t, df, p)
    t = diff / se
    return TTest(test, diff, t, df, student_t_cdf(t, df))


def paired_t_test(candidate: Sequence[float], baseline: Sequence[float], two_sided: bool = True) -> TTest:
    """t-test on the per-index differences candidate[i] - baseline[i] (df = n-1)."""
    if len(candidate) != len(baseline) or len(candidate) < 2:
        raise DataError(f"paired test needs two equal-length groups of >= 2 values, got {len(candidate)} "
                        f"and {len(baseline)}")
    diffs = [c - b for c, b in zip(candidate, baseline)]
    mean, var = _mean_var(diffs)
    df = float(len(diffs) - 1)
    t = mean / math.sqrt(var / len(diffs))
    p = 2.0 * student_t_cdf(-abs(t), df) if two_sided else student_t_cdf(t, df)
    return TTest("paired two-sided" if two_sided else "paired", mean, t, df, p)


# --------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class SeedResult:
    label: str
    """The report path or the number as typed."""
    bpb: float
    key: str
    """Report key the value came from ('' for a plain number)."""
    config_hash: str | None
    nats_per_bpb: float | None
    """ln2 * bytes/token of the report's val set, when the report has it."""
    compliant: bool | None


def config_hash(config: dict) -> str:
    """sha256 (first 16 hex) of the config without the per-seed fields."""
    flat = _flatten(config)
    for name in SEED_FIELDS:
        flat.pop(name, None)
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]


def _flatten(d: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def read_seed_result(item: str) -> SeedResult:
    """A plain bpb number, or a report.json (or a run directory holding one)."""
    try:
        return SeedResult(item, float(item), "", None, None, None)
    except ValueError:
        pass
    path = Path(item)
    if path.is_dir():
        path = path / "report.json"
    if not path.exists():
        raise DataError(f"{item}: neither a number nor an existing report.json")
    try:
        rep = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a readable JSON report ({e})") from None
    # The run's own score (a non-compliant ensemble never is), as pack and the audit take it.
    head = Report.from_dict(rep).headline() if isinstance(rep, dict) else None
    key = head[0] if head is not None and head[0] in RESULT_KEYS else None
    if key is None:
        raise DataError(f"{path}: no {' / '.join(RESULT_KEYS)} in the report (run `pgolf eval` first)")
    config = rep.get("config")
    if not isinstance(config, dict) and (path.parent / "config.json").exists():
        config = json.loads((path.parent / "config.json").read_text())
    nats_per_bpb = None
    nbytes, ntok = rep.get("target_bytes"), rep.get("target_tokens")
    if isinstance(nbytes, (int, float)) and isinstance(ntok, (int, float)) and ntok > 0 and nbytes > 0:
        nats_per_bpb = math.log(2) * nbytes / ntok
    compliant = rep.get("peer_compliant") if key == "val_bpb_ttt_ensemble" else None
    return SeedResult(str(path), float(rep[key]), key, config_hash(config) if isinstance(config, dict) else None,
                      nats_per_bpb, compliant)


def _log_result(path: Path) -> SeedResult:
    log = read_log(path)
    stage, bpb = log.score
    return SeedResult(str(path), bpb, f"log {stage}", log.config_hash or None, log.nats_per_bpb, None)


def _record_results(folder: Path) -> list[SeedResult]:
    """A record folder's per-seed figures: pgolf's per-seed reports, else the text logs, else what
    submission.json publishes (seed_results, or only its val_bpb mean)."""
    reports = ([folder / "report.json"] if (folder / "report.json").exists() else
               sorted(d / "report.json" for d in folder.iterdir() if d.is_dir() and (d / "report.json").exists()))
    if reports:
        return [read_seed_result(str(p)) for p in reports]
    logs = record_logs(folder)
    if logs:
        return [_log_result(p) for p in logs]
    path = folder / "submission.json"
    try:
        sub = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not readable JSON ({e})") from None
    per = sub.get("seed_results") if isinstance(sub, dict) else None
    if isinstance(per, dict) and per:
        out = []
        for seed, row in per.items():
            bpb = row.get("val_bpb") if isinstance(row, dict) else None
            if not isinstance(bpb, (int, float)):
                raise DataError(f"{path}: seed_results[{seed}] has no val_bpb")
            out.append(SeedResult(f"{path} seed {seed}", float(bpb), "submission seed_results", None, None, None))
        return out
    if isinstance(sub, dict) and isinstance(sub.get("val_bpb"), (int, float)):
        return [SeedResult(f"{path} val_bpb", float(sub["val_bpb"]), "submission val_bpb", None, None, None)]
    raise DataError(f"{path}: no logs, no seed_results and no val_bpb to read")


def read_results(item: str) -> list[SeedResult]:
    """The per-seed figures one argument stands for: a number, a report.json or run directory, a record
    folder (or its submission.json), or a text log."""
    path = Path(item)
    if path.is_file() and path.name == "submission.json":
        path = path.parent
    if path.is_dir() and (path / "submission.json").exists():
        return _record_results(path)
    if path.is_file() and path.suffix in (".log", ".txt"):
        return [_log_result(path)]
    return [read_seed_result(item)]


def read_groups(items: list[str]) -> list[SeedResult]:
    return [r for item in items for r in read_results(item)]


def check_group(name: str, results: list[SeedResult]) -> None:
    """Refuse a group whose reports disagree on the config or on which figure they report."""
    hashes = {r.config_hash for r in results if r.config_hash is not None}
    if len(hashes) > 1:
        detail = ", ".join(f"{Path(r.label).parent.name or r.label}={r.config_hash}" for r in results)
        raise ConfigError(f"{name}: seeds come from different configs ({detail}); "
                          "significance needs one config run with several seeds")
    keys = {r.key for r in results if r.key}
    if len(keys) > 1:
        raise DataError(f"{name}: reports mix figures ({', '.join(sorted(keys))}); evaluate every seed the same way")


# --------------------------------------------------------------------------- verdict
@dataclass(frozen=True)
class Verdict:
    candidate_mean_bpb: float
    baseline_mean_bpb: float
    delta_bpb: float
    delta_nats: float
    nats_per_bpb: float
    nats_per_bpb_source: str
    test: TTest
    strict: TTest
    """The test shifted by min_delta: p < 0.01 here is the README's bar."""
    min_delta_nats: float
    passes_strict: bool
    passes_practice: bool


def decide(candidate: list[SeedResult], baseline: list[SeedResult], min_delta_nats: float = 0.005) -> Verdict:
    check_group("candidate", candidate)
    check_group("baseline", baseline)
    c = [r.bpb for r in candidate]
    b = [r.bpb for r in baseline]
    known = [r.nats_per_bpb for r in candidate + baseline if r.nats_per_bpb is not None]
    if known:
        nats_per_bpb, source = math.fsum(known) / len(known), f"bytes/token of {len(known)} report(s)"
    else:
        nats_per_bpb = RECORD_NATS_PER_BPB
        source = (f"assumed {RECORD_NATS_PER_BPB / math.log(2):.4f} bytes/token "
                  "(CaseOps SP8192 val set); inputs carry no byte counts")
    test = welch_t_test(c, b)
    strict = welch_t_test(c, b, shift=min_delta_nats / nats_per_bpb)
    mean_c, mean_b = math.fsum(c) / len(c), math.fsum(b) / len(b)
    return Verdict(mean_c, mean_b, mean_c - mean_b, (mean_c - mean_b) * nats_per_bpb, nats_per_bpb, source,
                   test, strict, min_delta_nats,
                   passes_strict=strict.p_value < STRICT_P,
                   passes_practice=test.mean_diff < 0 and test.p_value < PRACTICE_P)


def format_verdict(candidate: list[SeedResult], baseline: list[SeedResult], v: Verdict) -> str:
    lines = [f"{'group':<10} {'bpb':>12}  source"]
    for name, group in (("candidate", candidate), ("baseline", baseline)):
        for r in group:
            lines.append(f"{name:<10} {r.bpb:>12.8f}  " + (f"{r.label} [{r.key}]" if r.key else "(number)"))
    sd = lambda xs: math.sqrt(_mean_var(xs)[1]) if len(xs) > 1 else 0.0  # noqa: E731
    lines += [
        f"candidate mean {v.candidate_mean_bpb:.8f} (std {sd([r.bpb for r in candidate]):.8f}, n={len(candidate)})",
        f"baseline  mean {v.baseline_mean_bpb:.8f} (std {sd([r.bpb for r in baseline]):.8f}, n={len(baseline)})",
        f"delta {v.delta_bpb:+.8f} bpb = {v.delta_nats:+.6f} nats/token ({v.nats_per_bpb_source})",
        f"{v.test.test} t-test (one-sided, H1: candidate lower): t={v.test.t:.4f} df={v.test.df:.2f} "
        f"p={v.test.p_value:.4g}",
        f"improvement >= {v.min_delta_nats} nats: t={v.strict.t:.4f} df={v.strict.df:.2f} p={v.strict.p_value:.4g}",
        f"README bar (>= {v.min_delta_nats} nats at p < {STRICT_P}): {'PASS' if v.passes_strict else 'FAIL'}",
        f"maintainers' practice (lower at p < {PRACTICE_P}): {'PASS' if v.passes_practice else 'FAIL'}",
    ]
    if any(r.compliant is False for r in candidate):
        lines.append("NOTE: candidate seeds used the 'pr2139' peer ensemble, which is NOT compliant (C1, C4)")
    if any(r.config_hash is None and r.key for r in candidate + baseline):
        lines.append("NOTE: some reports carry no config, so their same-config check was skipped")
    paired = maintainers_test(candidate, baseline)
    lines.append(f"maintainers' test ({MAINTAINERS_TEST}): "
                 + (f"t={paired.t:.4f} df={paired.df:.0f} p={paired.p_value:.4g}" if paired
                    else "n/a (needs two groups of equal size >= 2)"))
    return "\n".join(lines)


def maintainers_test(candidate: list[SeedResult], baseline: list[SeedResult]) -> TTest | None:
    if len(candidate) != len(baseline) or len(candidate) < 2:
        return None
    return paired_t_test([r.bpb for r in candidate], [r.bpb for r in baseline])


def comparison(candidate: list[SeedResult], baseline: list[SeedResult], baseline_name: str,
               min_delta_nats: float = 0.005) -> dict:
    """What a record states about its baseline: the delta in bpb and nats, the p-values, the bar and the tests.

    With one candidate seed there is no t-test; the delta is still stated and the p-value is None."""
    check_group("baseline", baseline)
    mean_c = math.fsum(r.bpb for r in candidate) / len(candidate)
    mean_b = math.fsum(r.bpb for r in baseline) / len(baseline)
    out: dict = {"baseline": baseline_name, "baseline_val_bpb": mean_b, "baseline_seeds": len(baseline),
                 "delta_bpb": mean_c - mean_b, "bar": BAR, "test": VERDICT_TEST}
    if len(candidate) < 2:
        known = [r.nats_per_bpb for r in candidate + baseline if r.nats_per_bpb is not None]
        npb = math.fsum(known) / len(known) if known else RECORD_NATS_PER_BPB
        out.update(delta_nats=(mean_c - mean_b) * npb, p_value=None, p_value_bar=None, passes_bar=False,
                   note="one seed: a t-test needs at least 2")
        return out
    v = decide(candidate, baseline, min_delta_nats)
    paired = maintainers_test(candidate, baseline)
    out.update(delta_nats=v.delta_nats, p_value=v.test.p_value, p_value_bar=v.strict.p_value,
               passes_bar=v.passes_strict, passes_practice=v.passes_practice,
               maintainers_test=MAINTAINERS_TEST, maintainers_p_value=paired.p_value if paired else None)
    return out


def comparison_lines(c: dict) -> list[str]:
    """The comparison in words: delta, p-values, the bar and the tests, one line each."""
    p = "n/a" if c["p_value"] is None else f"{c['p_value']:.4g}"
    pb = "n/a" if c["p_value_bar"] is None else f"{c['p_value_bar']:.4g}"
    lines = [f"baseline {c['baseline']}: val_bpb {c['baseline_val_bpb']:.8f} ({c['baseline_seeds']} seed(s))",
             f"delta {c['delta_bpb']:+.8f} bpb = {c['delta_nats']:+.6f} nats; p={p} (lower), p={pb} (>= 0.005 nats "
             f"better)",
             f"bar: {c['bar']}: {'PASS' if c['passes_bar'] else 'FAIL'} ({c['test']})"]
    if c.get("maintainers_p_value") is not None:
        lines.append(f"maintainers' test: {c['maintainers_test']}: p={c['maintainers_p_value']:.4g}")
    if c.get("note"):
        lines.append(f"note: {c['note']}")
    return lines
