"""A record's text log, read as it is: the challenge's `train_seed<N>.log` or the one `pgolf pack` writes.

Upstream logs open with a hyperparameter dump (`Hyperparameters:` then two-space
indented `name: value` lines), usually the script's source between `====` rulers,
then progress and result lines whose formats the record scripts share:

    <step>/<iters> train_loss: <f4> train_time: <f1>m tok/s: <i>
    stopping_early: wallclock_cap train_time: <i>ms step: <i>/<i>
    train_shards: <i>      val_tokens: <i>      model_params:<i>
    diagnostic pre-quantization post-ema val_loss:<f8> val_bpb:<f8> eval_time:<i>ms
    Code size (compressed): <i> bytes      Serialized model quantized+<c>: <i> bytes
    Total submission size quantized+<c>: <i> bytes
    diagnostic quantized val_loss:<f8> val_bpb:<f8> eval_time:<i>ms
    ttt_phased: total_docs:<i> ...         peer_ens:baseline val_loss:<f6> val_bpb:<f6>
    quantized_ttt_phased val_loss:<f8> val_bpb:<f8> eval_time:<i>ms      total_eval_time:<f1>s

pgolf's own log (`pgolf.submission.record.seed_log`) has a `hyperparameters:` block of
dotted config fields, the same result lines (its eval log) and a `final:` block.
Parsing never judges; `pgolf.submission.audit` does. The one exception is a log that
stops before its final score: that is not evidence of anything, so it is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from pgolf.errors import DataError

# Fields that name the run, its paths or its process, not the configuration: two seeds of one
# record differ in them legitimately.
BOOKKEEPING = frozenset({
    "seed", "run_id", "logfile", "rank", "local_rank", "is_main_process", "data_dir", "datasets_dir", "data_path",
    "tokenizer_path", "train_files", "val_files", "val_bytes_files", "artifact_dir", "model_path",
    "quantized_model_path", "train.seed", "ttt.peer_seed", "preset",
})

STAGES = ("pre_ema", "prequant", "quantized", "ttt", "ttt_ensemble")
"""val_bpb stages in pipeline order; the score is the last legal one a log reached."""

_F = r"([\d.]+(?:e-?\d+)?)"
_LINES: list[tuple[str, re.Pattern]] = [
    ("step", re.compile(r"^(?:step:)?(\d+)/(\d+) train_loss: ?" + _F + r"(?: train_time: ?" + _F + r"(m|ms|s)\b)?")),
    ("val", re.compile(r"^(?:step:)?(\d+)/(\d+) val_loss: ?" + _F + r" val_bpb: ?" + _F)),
    ("stop", re.compile(r"^stopping_early: \w+ train_time: ?(\d+)ms step: ?(\d+)/(\d+)")),
    ("train_shards", re.compile(r"^train_shards: ?(\d+)")),
    ("val_tokens", re.compile(r"^val_tokens: ?(\d+)")),
    ("model_params", re.compile(r"^model_params: ?(\d+)")),
    ("prequant", re.compile(r"^diagnostic pre-quantization post-ema val_loss:" + _F + r" val_bpb:" + _F)),
    ("quantized", re.compile(r"^(?:diagnostic quantized|final_\w*roundtrip\w*) val_loss:" + _F + r" val_bpb:" + _F
                             + r"(?: eval_time:(\d+)ms)?")),
    ("ttt", re.compile(r"^peer_ens:baseline val_loss:" + _F + r" val_bpb:" + _F)),
    ("ttt_final", re.compile(r"^quantized_ttt\w* val_loss:" + _F + r" val_bpb:" + _F + r"(?: eval_time:(\d+)ms)?")),
    ("total_eval", re.compile(r"^total_eval_time: ?" + _F + r"s")),
    ("code_raw", re.compile(r"^Code size \(uncompressed\): (\d+) bytes")),
    ("code", re.compile(r"^Code size(?: \(compressed\))?: (\d+) bytes")),
    ("model", re.compile(r"^Serialized model (?:quantized|int)[^:]*: (\d+) bytes")),
    ("total", re.compile(r"^Total submission size[^:]*: (\d+) bytes")),
    ("ttt_docs", re.compile(r"^ttt_phased: total_docs:(\d+)")),
]
_RULER = re.compile(r"^={20,}\s*$")
_PGOLF_FINAL = re.compile(r"^  (\w+): (.*)$")


@dataclass
class SeedLog:
    path: Path
    fmt: str
    """'upstream' or 'pgolf'."""
    hyperparameters: dict[str, str]
    source_sha256: str | None = None
    """sha256 of the source the log embeds between its rulers (upstream), if any."""
    steps: int | None = None
    iterations: int | None = None
    train_seconds: float | None = None
    eval_seconds: float | None = None
    bpb: dict[str, float] = field(default_factory=dict)
    loss: dict[str, float] = field(default_factory=dict)
    artifact_bytes: int | None = None
    code_bytes: int | None = None
    code_raw_bytes: int | None = None
    model_bytes: int | None = None
    train_shards: int | None = None
    val_tokens: int | None = None
    val_docs: int | None = None
    model_params: int | None = None
    peer_k: int | None = None
    last_line: str = ""
    num_lines: int = 0
    stopped: bool = False
    quantized_eval_seconds: float | None = None
    """The quantized model's eval time: the evaluation budget's figure for records without TTT."""
    headline: str | None = None
    """The stage pgolf's own log names as its score (it knows which figure is legal)."""
    """A stopping_early line was seen (its train_time is the training clock)."""

    @property
    def seed(self) -> int | None:
        raw = self.hyperparameters.get("seed", self.hyperparameters.get("train.seed"))
        try:
            return int(str(raw).strip())
        except ValueError:
            named = re.search(r"seed_?(\d+)", self.path.name)  # logs without a dump: train_seed42.log
            return int(named.group(1)) if named else None

    @property
    def config(self) -> dict[str, str]:
        """The hyperparameters that define the configuration (bookkeeping left out)."""
        return {k: v for k, v in self.hyperparameters.items() if k not in BOOKKEEPING}

    @property
    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def caseops(self) -> bool:
        hp = self.hyperparameters
        flag = hp.get("caseops_enabled", hp.get("data.caseops"))
        if flag is not None:
            return str(flag).strip().lower() in ("1", "true")
        return any("caseops" in str(hp.get(k, "")).lower() for k in ("datasets_dir", "data_path", "tokenizer_path"))

    @property
    def expects_ttt(self) -> bool:
        flag = self.hyperparameters.get("ttt_enabled", self.hyperparameters.get("ttt.enabled"))
        return str(flag).strip().lower() in ("1", "true")

    @property
    def score(self) -> tuple[str, float] | None:
        """(stage, val_bpb) of the headline: the last stage the log reached after quantization."""
        if self.headline in self.bpb:
            return self.headline, self.bpb[self.headline]
        for stage in ("ttt_ensemble", "ttt", "quantized"):
            if stage in self.bpb:
                return stage, self.bpb[stage]
        return None

    @property
    def nats_per_bpb(self) -> float | None:
        """ln 2 x bytes per token of the val set: val_loss / val_bpb of any stage the log printed."""
        head = self.score
        order = ([head[0]] if head else []) + [s for s in reversed(STAGES) if s in self.bpb]  # 8-decimal lines first
        for stage in order:
            if stage in self.loss and self.bpb[stage] > 0 and self.loss[stage] > 0:
                return self.loss[stage] / self.bpb[stage]
        return None

    @property
    def complete(self) -> bool:
        if self.fmt == "pgolf":  # written at pack time from the report: complete once it names its score
            return self.headline is not None
        return self.score is not None and (not self.expects_ttt or "ttt_ensemble" in self.bpb or "ttt" in self.bpb)


def _hyperparameters(lines: list[str]) -> tuple[dict[str, str], int]:
    """The `name: value` lines under the first `Hyperparameters:` heading, and where the block ends."""
    start = next((i for i, t in enumerate(lines) if t.strip().lower() == "hyperparameters:"), None)
    if start is None:
        return {}, 0
    hp: dict[str, str] = {}
    i = start + 1
    while i < len(lines) and lines[i].startswith("  "):
        name, sep, value = lines[i].strip().partition(":")
        if sep:
            hp[name.strip()] = value.strip()
        i += 1
    return hp, i


def _source_sha(lines: list[str], after: int) -> str | None:
    """The text between the first two rulers after the hyperparameters (the record embeds its source there)."""
    rulers = [i for i in range(after, len(lines)) if _RULER.match(lines[i])][:2]
    if len(rulers) < 2 or rulers[1] - rulers[0] < 3:
        return None
    return hashlib.sha256("\n".join(lines[rulers[0] + 1:rulers[1]]).encode()).hexdigest()


def _int_or(raw: str | None, default: int) -> int:
    try:
        return int(str(raw).strip())
    except ValueError:
        return default


def _set_stage(log: SeedLog, stage: str, loss: str, bpb: str) -> None:
    log.loss[stage], log.bpb[stage] = float(loss), float(bpb)


def parse_text(text: str, path: Path) -> SeedLog:
    lines = text.splitlines()
    fmt = "pgolf" if lines and lines[0].startswith("pgolf ") else "upstream"
    hp, end = _hyperparameters(lines)
    if fmt == "pgolf" and "seed" not in hp:
        seed_line = next((t for t in lines[:3] if t.startswith("seed: ")), None)
        if seed_line:
            hp.setdefault("train.seed", seed_line[6:].strip())
    log = SeedLog(path=path, fmt=fmt, hyperparameters=hp, num_lines=len(lines),
                  last_line=next((t for t in reversed(lines) if t.strip()), ""))
    if fmt == "upstream":
        log.source_sha256 = _source_sha(lines, end)
    in_final = False
    for raw in lines[end:]:
        text_line = raw.strip()
        if fmt == "pgolf" and raw == "final:":
            in_final = True
            continue
        if in_final:
            _pgolf_final(log, raw)
            continue
        _result_line(log, text_line)
    if log.eval_seconds is None and not {"ttt", "ttt_ensemble"} & set(log.bpb):
        log.eval_seconds = log.quantized_eval_seconds
    return log


def _result_line(log: SeedLog, t: str) -> None:
    for kind, rx in _LINES:
        m = rx.match(t)
        if not m:
            continue
        g = m.groups()
        if kind == "step":
            log.steps, log.iterations = int(g[0]), int(g[1])
            if not log.stopped and g[4] is not None:  # a stopping line (milliseconds) wins over these minutes
                log.train_seconds = float(g[3]) * {"m": 60.0, "s": 1.0, "ms": 1e-3}[g[4]]
        elif kind == "val":
            log.steps, log.iterations = int(g[0]), int(g[1])
            _set_stage(log, "pre_ema", g[2], g[3])
        elif kind == "stop":
            log.train_seconds, log.steps, log.iterations = int(g[0]) / 1000.0, int(g[1]), int(g[2])
            log.stopped = True
        elif kind in ("train_shards", "val_tokens", "model_params", "code_raw", "model"):
            attr = {"code_raw": "code_raw_bytes", "model": "model_bytes"}.get(kind, kind)
            setattr(log, attr, int(g[0]))
        elif kind == "code":
            log.code_bytes = int(g[0])
        elif kind == "total":
            log.artifact_bytes = int(g[0])
        elif kind == "ttt_docs":
            log.val_docs = int(g[0])
            k = re.search(r"\bpeer_k:(\d+)", t)
            log.peer_k = int(k.group(1)) if k else log.peer_k
        elif kind in ("prequant", "quantized", "ttt"):
            _set_stage(log, kind, g[0], g[1])
            if kind == "quantized" and g[2] is not None:
                log.quantized_eval_seconds = int(g[2]) / 1000.0
        elif kind == "ttt_final":
            # With a peer ensemble on, the final line is the ensemble's figure; without, own TTT's.
            k = log.peer_k if log.peer_k is not None else _int_or(log.hyperparameters.get("ttt_peer_ensemble_k"), 1)
            _set_stage(log, "ttt_ensemble" if k > 1 else "ttt", g[0], g[1])
            if g[2] is not None and log.eval_seconds is None:
                log.eval_seconds = int(g[2]) / 1000.0
        elif kind == "total_eval":
            log.eval_seconds = float(g[0])
        return


def _pgolf_final(log: SeedLog, raw: str) -> None:
    m = _PGOLF_FINAL.match(raw)
    if not m:
        return
    key, value = m.group(1), m.group(2).strip()
    if key == "score":
        parts = value.split()
        if len(parts) == 2:
            stage = parts[0].replace("val_bpb_", "").replace("roundtrip", "quantized")
            log.bpb[stage], log.headline = float(parts[1]), stage
    elif key == "artifact_bytes":
        nums = re.findall(r"\d+", value)
        if nums:
            log.artifact_bytes = int(nums[0])
        if len(nums) >= 3:
            log.code_bytes, log.model_bytes = int(nums[1]), int(nums[2])
    elif key == "train_seconds":
        m2 = re.match(r"([\d.]+)\s+ttt_eval_time_s: ([\d.]+|None)", value)
        if m2:
            log.train_seconds = float(m2.group(1))
            if m2.group(2) != "None":
                log.eval_seconds = float(m2.group(2))
    elif key.startswith("val_bpb_") and value != "None":
        stage = key[len("val_bpb_"):].replace("roundtrip", "quantized")
        log.bpb[stage] = float(value)  # the report's figures, exact where the log lines are rounded


def read_log(path: str | Path) -> SeedLog:
    """Parse one log; DataError when it is unreadable, not a record log, or cut off before its final score."""
    p = Path(path)
    try:
        text = p.read_text(errors="replace")
    except OSError as e:
        raise DataError(f"{p}: cannot read the log ({e})") from None
    log = parse_text(text, p)
    if not log.hyperparameters and not log.bpb:
        raise DataError(f"{p}: not a record log (no hyperparameter block and no val_bpb line)")
    if not log.complete:
        want = "the TTT result (quantized_ttt_phased)" if log.expects_ttt else "a final val_bpb line"
        raise DataError(f"{p}: cut off mid-run: {log.num_lines} lines, the last {log.last_line.strip()[:80]!r}, "
                        f"and no {want}")
    return log


def hyperparameter_block(text: str, path: Path) -> dict[str, str]:
    """Only the hyperparameters of a log (all a preset needs, so a run that crashed later still has one);
    DataError when there is no block or the file ends inside it."""
    lines = text.splitlines()
    hp, end = _hyperparameters(lines)
    if not hp:
        raise DataError(f"{path}: no hyperparameter block (a 'Hyperparameters:' line followed by "
                        "'  name: value' lines)")
    if end >= len(lines):
        raise DataError(f"{path}: cut off inside the hyperparameter block (it ends at {lines[-1].strip()!r})")
    return hp


def is_log_name(path: Path) -> bool:
    """A file a record keeps its seed logs in (train_seed42.log, seed42.log, train.log, logs/<id>.txt)."""
    return path.is_file() and (path.suffix == ".log" or (path.suffix == ".txt" and path.name != "requirements.txt"))


def record_logs(folder: Path) -> list[Path]:
    """The log files of a record folder: top level, then a `logs/` subfolder."""
    found = [p for p in sorted(folder.iterdir()) if is_log_name(p)]
    if (folder / "logs").is_dir():
        found += [p for p in sorted((folder / "logs").iterdir()) if is_log_name(p)]
    return found


def mean(xs: list[float]) -> float:
    return math.fsum(xs) / len(xs)
