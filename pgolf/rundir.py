"""A run directory as a type: every file name a run holds, and its report, in one place.

    RUN/config.json            the resolved RunConfig the run was made with
    RUN/train.jsonl            training events (RunLog: JSONL plus readable console lines)
    RUN/eval.jsonl             evaluation events of `pgolf eval`
    RUN/checkpoint.pt          resumable training state (weights, EMA, optimizers, loader cursor, RNG)
    RUN/final_model.pt         the EMA weights, banked pgolf state dict
    RUN/calibration.pt         GPTQ Hessians and activation RMS, collected inside the training clock
    RUN/final_model.int6.ptz   the compressed artifact
    RUN/report.json            the run's figures (`Report`)
    RUN/train_loss.png         the training plot
    RUN/record/                the record folder `pgolf run` packs

`Report` names every figure once, with its unit in the name, and decides the
run's headline score (`Report.headline`). report.json files written before a
key was renamed are read through `Report.from_dict`, which migrates them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgolf.config import RunConfig, load_json
from pgolf.distributed import is_main
from pgolf.errors import ArtifactError, ConfigError, DataError


@dataclass(frozen=True)
class RunDir:
    """The files of one run; constructing it touches nothing on disk."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    config = property(lambda self: self.path / "config.json")
    train_log = property(lambda self: self.path / "train.jsonl")
    eval_log = property(lambda self: self.path / "eval.jsonl")
    checkpoint = property(lambda self: self.path / "checkpoint.pt")
    final_model = property(lambda self: self.path / "final_model.pt")
    calibration = property(lambda self: self.path / "calibration.pt")
    artifact = property(lambda self: self.path / "final_model.int6.ptz")
    report = property(lambda self: self.path / "report.json")
    plot = property(lambda self: self.path / "train_loss.png")
    record = property(lambda self: self.path / "record")

    def result_files(self) -> tuple[Path, ...]:
        """What `train` and `quantize` leave behind; `--overwrite` removes exactly these."""
        return (self.checkpoint, self.final_model, self.calibration, self.report, self.train_log, self.config,
                self.artifact)

    def read_config(self) -> RunConfig:
        if not self.path.is_dir():
            raise ConfigError(f"{self.path}: run directory not found")
        if not self.config.exists():
            raise ConfigError(f"{self.config}: not found (is {self.path} a pgolf run directory?)")
        return load_json(self.config)

    def write_config(self, cfg: RunConfig) -> None:
        if is_main():
            self.path.mkdir(parents=True, exist_ok=True)
            self.config.write_text(cfg.to_json() + "\n")

    def read_report(self) -> Report:
        return Report.from_dict(json.loads(self.report.read_text())) if self.report.exists() else Report()

    def update_report(self, **figures: Any) -> Report:
        """Merge `figures` into report.json (phase_seconds key by key); rank 0 writes, atomically."""
        rep = self.read_report().merged(**figures)
        if is_main():
            self.path.mkdir(parents=True, exist_ok=True)
            tmp = self.report.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(rep.to_dict(), indent=2, sort_keys=True, default=str))
            os.replace(tmp, self.report)
        return rep

    def data_dir(self, given: str | Path | None = None) -> Path:
        """The data directory to evaluate on: `given`, else the one the run trained on."""
        if given:
            return Path(given)
        recorded = self.read_report().data_dir
        if not recorded:
            raise ConfigError(f"{self.report}: no data_dir recorded; pass --data DIR")
        if not Path(recorded).is_dir():
            raise DataError(f"{recorded}: the run's data directory is gone; pass --data DIR")
        return Path(recorded)

    def require(self, path: Path, how: str) -> Path:
        """`path` if it exists, else one line saying which verb makes it."""
        if not path.exists():
            raise ArtifactError(f"{path}: not found; {how}")
        return path


# Keys renamed since report.json was first written: old name -> current name.
_RENAMED = {"val_bpb": "val_bpb_prequant", "val_loss": "val_loss_prequant"}

# The run's score is the last legal stage it reached, in this order.
HEADLINE_ORDER = ("val_bpb_ttt_ensemble", "val_bpb_ttt", "val_bpb_roundtrip")


@dataclass(frozen=True)
class Report:
    """Every figure a run reports; None = that stage has not run. Seconds end in `_seconds`."""

    # data and model
    data_dir: str | None = None
    data_manifest_sha256: str | None = None
    tokenizer_sha256: str | None = None          # the training data's tokenizer; eval/quantize check data against it
    model_params: int | None = None
    # training
    steps: int | None = None
    stopped_by: str | None = None
    train_seconds: float | None = None
    tokens_per_second: float | None = None
    final_train_loss: float | None = None
    calibration_seconds: float | None = None
    val_bpb_prequant: float | None = None        # EMA weights, full precision: the pre-quantization score
    val_loss_prequant: float | None = None
    val_bpb_pre_ema: float | None = None         # the raw (non-EMA) weights, for comparison only
    val_loss_pre_ema: float | None = None
    # quantization and size
    compressor: str | None = None
    model_bytes: int | None = None
    code_bytes: int | None = None
    code_raw_bytes: int | None = None
    artifact_bytes: int | None = None            # code + model: what the 16,000,000-byte cap counts
    size_cap_bytes: int | None = None
    artifact_headroom_bytes: int | None = None
    artifact_streams: dict | None = None
    artifact_coders: dict | None = None
    quant_summary: dict | None = None
    gptq_seconds: float | None = None
    compress_seconds: float | None = None
    decompress_seconds: float | None = None
    quant_seconds: float | None = None
    val_bpb_roundtrip: float | None = None       # the artifact read back from disk
    val_loss_roundtrip: float | None = None
    roundtrip_eval_seconds: float | None = None
    quant_bpb_delta: float | None = None
    # evaluation with test-time training
    target_tokens: int | None = None
    target_bytes: int | None = None
    val_bpb_ttt: float | None = None             # own-only score-first TTT
    val_loss_ttt: float | None = None
    val_bpb_ttt_ensemble: float | None = None    # TTT with the peer ensemble (or own-only when it is off)
    val_loss_ttt_ensemble: float | None = None
    ttt_headline: str | None = None              # "ensemble" or "own": which TTT figure is the score
    ttt_schedule: str | None = None              # "static" (reproducible) or "dynamic" (#2139's work stealing)
    ttt_virtual_ranks: int | None = None         # the ranks the TTT score is a function of (dynamic: processes)
    peer_mode: str | None = None
    peer_k: int | None = None
    peer_compliant: bool | None = None
    compliance_note: str | None = None
    route_fraction: float | None = None
    coverage_tokens: int | None = None
    ttt_eval_time_s: float | None = None         # the challenge's eval timer: TTT scoring plus global SGD
    ngram: dict | None = None                    # the n-gram tilt's figures (`NgramTilt.figures`) when it is on
    val_bpb_ttt_untilted: float | None = None    # with the tilt on, val_bpb_ttt is tilted; this is the same run without
    # TTT on the unquantized weights (`pgolf eval --prequant --ttt`): the same figures as above, never the score
    prequant_ttt: dict | None = None
    # bookkeeping
    phase_seconds: dict = field(default_factory=dict)
    pipeline_phase_seconds: dict | None = None
    config: dict | None = None
    # filled in by hand for a record folder, never computed
    author: str | None = None
    github_id: str | None = None
    date: str | None = None
    # keys this version does not know (a newer pgolf's, or added by hand): kept as they are, never read
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        """A report.json's contents; old key names are migrated, unknown keys kept in `extra`."""
        d = dict(d)
        for old, new in _RENAMED.items():
            if old in d:
                value = d.pop(old)
                d.setdefault(new, value)
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        extra = {k: d.pop(k) for k in sorted(set(d) - names)}
        return cls(**d, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The figures that are set (report.json never lists stages that did not run)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "extra" and getattr(self, f.name) not in (None, {})}
        return {**self.extra, **out}

    def merged(self, **figures: Any) -> Report:
        for old, new in _RENAMED.items():
            assert old not in figures, f"report figure {old!r} is now {new!r}"
        if "phase_seconds" in figures:
            figures["phase_seconds"] = {**self.phase_seconds, **figures["phase_seconds"]}
        return dataclasses.replace(self, **figures)

    def headline(self) -> tuple[str, float] | None:
        """(key, bpb) of the run's score: the last stage it reached, as its TTT result decided.

        After TTT, `ttt_headline` (written from `TTTResult.headline`) says whether the ensemble or
        the own-only figure is the score; reports written before that key existed fall back on
        the same rule: a non-compliant ensemble (peer_compliant False) is never the score.
        """
        if self.ttt_headline is not None:
            key = "val_bpb_ttt_ensemble" if self.ttt_headline == "ensemble" else "val_bpb_ttt"
            return key, float(getattr(self, key))
        for key in HEADLINE_ORDER:
            if key == "val_bpb_ttt_ensemble" and self.peer_compliant is False:
                continue
            value = getattr(self, key)
            if isinstance(value, (int, float)):
                return key, float(value)
        return None
