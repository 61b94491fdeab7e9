"""What `pgolf audit` reads: run directories and record folders, as plain views of their files.

A `RunView` holds one run's report.json, config, JSONL logs and the paths of its
artifact and packed code; a `Submission` is a record folder (submission.json,
README.md) with the runs of its seeds. Reading never judges: a missing file is
an empty field, and the checks in `pgolf.submission.audit` decide what that means.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgolf.config import RunConfig, flatten
from pgolf.errors import DataError
from pgolf.rundir import Report, RunDir
from pgolf.submission.significance import config_hash

_DEFAULTS = flatten(RunConfig().to_dict())
PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
_COUNT_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
                "nine": 9, "ten": 10, "single": 1}
REQUIRED_FIELDS = ("author", "name", "val_bpb")
"""What every submission.json carries, from the first records on; without them it is not a submission."""


@dataclass
class Check:
    status: str
    name: str
    subject: str
    detail: str


@dataclass
class RunView:
    """One run's evidence: a run directory, or the run a record folder was packed from."""

    path: Path
    kind: str  # "run" | "record"
    report: dict
    config: dict
    config_json: dict | None
    train_events: list[dict]
    eval_events: list[dict]
    artifact: Path | None
    code_file: Path | None

    @property
    def label(self) -> str:
        return str(self.path)

    @property
    def seed(self) -> int | None:
        s = cfg_get(self.config, "train.seed") if self.config else None  # no config: no default seed either
        return int(s) if isinstance(s, (int, float)) else None

    @property
    def config_hash(self) -> str | None:
        return config_hash(self.config) if self.config else None


@dataclass
class Submission:
    path: Path
    data: dict
    readme: str | None
    view: RunView | None
    extra_views: list[RunView] = field(default_factory=list)


# --------------------------------------------------------------------------- reading
def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data


def _read_jsonl(path: Path) -> list[dict]:
    """The records of a RunLog file; a line cut off by a crash is skipped, not fatal."""
    out = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in out if isinstance(r, dict)]


def cfg_get(config: dict, dotted: str) -> Any:
    """A config field by dotted name; RunConfig's default where the dict lacks it (older runs)."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _DEFAULTS.get(dotted)
        node = node[part]
    return node


def load_view(path: Path, kind: str) -> RunView:
    """A run directory (kind "run") or a record folder's own run (kind "record")."""
    run = RunDir(path)
    # Through Report: reports written before a key was renamed read with today's names.
    report = Report.from_dict(_read_json(run.report)).to_dict() if run.report.exists() else {}
    config_json = _read_json(run.config) if run.config.exists() else None
    config = config_json if config_json is not None else report.get("config") or {}
    artifact = run.artifact
    if not artifact.exists() and kind == "record" and RunDir(path.parent).report.exists():
        artifact = RunDir(path.parent).artifact  # pgolf run packs into RUN/record next to RUN's artifact
    code = path / "train_gpt.py"
    if not code.exists() and kind == "run":
        code = run.record / "train_gpt.py"  # what `pgolf run` packed from this run
    return RunView(path=path, kind=kind, report=report, config=config, config_json=config_json,
                   train_events=_read_jsonl(run.train_log), eval_events=_read_jsonl(run.eval_log),
                   artifact=artifact if artifact.exists() else None, code_file=code if code.exists() else None)


def load_inputs(paths: list[str | Path]) -> tuple[list[RunView], list[Submission]]:
    """Classify each path; a run directory's `record/` folder and a record's per-seed subfolders come along."""
    runs: list[RunView] = []
    subs: list[Submission] = []
    for item in paths:
        p = Path(item)
        if not p.is_dir():
            raise DataError(f"{p}: not a directory (give run directories or record folders)")
        if (p / "submission.json").exists():
            subs.append(_load_submission(p))
        elif (p / "report.json").exists() or (p / "config.json").exists():
            runs.append(load_view(p, "run"))
            if (p / "record" / "submission.json").exists():
                subs.append(_load_submission(p / "record"))
        else:
            raise DataError(f"{p}: neither a run directory (report.json) nor a record folder (submission.json)")
    return runs, subs


def is_run_record(path: Path) -> bool:
    """A record folder that carries pgolf's run evidence (report.json at the top or per seed)."""
    return (path / "report.json").exists() or any(d.is_dir() and (d / "report.json").exists()
                                                  for d in path.iterdir())


def _load_submission(path: Path) -> Submission:
    readme = path / "README.md"
    # A single-seed record carries its run's report at the top; a multi-seed one has a folder per seed.
    view = load_view(path, "record") if (path / "report.json").exists() else None
    extra = [load_view(d, "record") for d in sorted(path.iterdir()) if d.is_dir() and (d / "report.json").exists()]
    for v in extra:
        if v.code_file is None and (path / "train_gpt.py").exists():
            v.code_file = path / "train_gpt.py"  # one train_gpt.py serves every seed of the submission
    return Submission(path=path, data=read_submission_json(path),
                      readme=readme.read_text(errors="replace") if readme.exists() else None, view=view,
                      extra_views=extra)


def read_submission_json(folder: Path) -> dict:
    """submission.json of a record folder; DataError when it is not a JSON object or lacks a required field."""
    path = folder / "submission.json"
    data = _read_json(path)
    missing = [k for k in REQUIRED_FIELDS if k not in data]
    if missing:
        raise DataError(f"{path}: lacks {', '.join(missing)} (a submission.json carries {', '.join(REQUIRED_FIELDS)})")
    if not isinstance(data["val_bpb"], (int, float)) or isinstance(data["val_bpb"], bool):
        raise DataError(f"{path}: val_bpb is {data['val_bpb']!r}, not a number")
    return data


def claimed_seed_count(data: dict) -> tuple[str, int] | None:
    """(key, n) of a submission.json flag that claims n seeds (three_seeds: true, num_seeds: 3), if any."""
    for key, v in data.items():
        m = re.fullmatch(r"(\w+?)_seeds?", key)
        if m and v is True:
            word = m.group(1).lower()
            n = _COUNT_WORDS.get(word, int(word) if word.isdigit() else None)
            if n is not None:
                return key, n
        if key in ("num_seeds", "n_seeds", "seed_count") and isinstance(v, int) and not isinstance(v, bool):
            return key, int(v)
    return None


def readme_seed_counts(readme: str) -> set[int]:
    """Every seed count a README mentions ("3 seeds", "three-seed")."""
    words = "|".join(_COUNT_WORDS)
    found = set()
    for m in re.finditer(rf"\b(\d+|{words})[- ]seeds?\b", readme, flags=re.IGNORECASE):
        w = m.group(1).lower()
        found.add(int(w) if w.isdigit() else _COUNT_WORDS[w])
    return found


def seed_claims_check(data: dict, readme: str | None, num_seeds: int, who: str) -> Check:
    """consistency.seed_claims: a count that submission.json claims must match the seeds listed (FAIL); one
    the README mentions is only a WARN (prose can count other things)."""
    claim = claimed_seed_count(data)
    counts = readme_seed_counts(readme) if readme else set()
    if claim is not None and claim[1] != num_seeds:
        return Check(FAIL, "consistency.seed_claims", who,
                     f"submission.json {claim[0]}: {data[claim[0]]} but {num_seeds} seed(s) listed")
    if counts and counts != {num_seeds}:
        return Check(WARN, "consistency.seed_claims", who,
                     f"README.md mentions {sorted(counts)} seed(s); {num_seeds} listed")
    return Check(PASS, "consistency.seed_claims", who, f"{num_seeds} seed(s), no conflicting claim")
