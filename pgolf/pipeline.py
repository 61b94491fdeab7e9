"""`pgolf run`: every stage in order, as a competitor would run them by hand.

    data prepare -> train -> quantize -> eval --ttt -> pack

Packing comes last so the record folder carries the final (TTT) numbers and logs.

Each stage is the same verb a user can run alone: the pipeline builds that
verb's argument list and calls its handler, so `pgolf run` can never drift from
the individual commands. Under `torchrun` every rank runs every stage; stages
that only write files (data prepare, pack) run on rank 0 behind a barrier.

The run ends with one summary table (pre-quant, roundtrip, TTT and TTT +
ensemble bpb, artifact bytes, seconds per phase) and `RUN/report.json`.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from pgolf.config import load_json, load_preset, parse_set_args
from pgolf.distributed import barrier, init_distributed, is_main, print0
from pgolf.errors import ConfigError
from pgolf.report import read_report, update_report


def default_preset(world_size: int) -> str:
    """`seed` on GPUs (the record's configuration), `cpu` otherwise."""
    return "seed" if torch.cuda.is_available() else "cpu"


def _run_verb(argv: list[str]) -> None:
    """Parse `argv` with the real CLI parser and call that verb's handler (errors propagate)."""
    from pgolf.cli import _handler, build_parser

    args = build_parser().parse_args(argv)
    rc = _handler(args.handler)(args)
    if rc:
        raise SystemExit(rc)


def _prepare_data(args, run_dir: Path, vocab_size: int) -> Path:
    """Prepare (rank 0) or reuse, then check, the data directory for this run; `--data` is used as given."""
    if args.data:
        return Path(args.data)
    data_dir = run_dir.parent / f"{run_dir.name}-data"
    manifest = data_dir / "manifest.json"
    reuse = manifest.exists() and _same_source(json.loads(manifest.read_text()), args.source, vocab_size)
    if is_main():
        if reuse:
            print0(f"data: reusing {data_dir} (same source and vocabulary)")
        else:
            _run_verb(["data", "prepare", "--source", args.source, "--out", str(data_dir),
                       "--vocab-size", str(vocab_size), "--overwrite"])
        # Nothing is trained on a directory that fails its checks (overlap, sidecars, ids, hashes).
        _run_verb(["data", "check", str(data_dir)])
    barrier()
    return data_dir


def _same_source(manifest: dict, source: str, vocab_size: int) -> bool:
    """True when an existing data dir was prepared from this very source with this vocabulary."""
    from pgolf.corpus import embedded_corpus_sha256
    from pgolf.tokenizer import file_sha256

    src = manifest.get("source", {})
    if manifest.get("vocab_size") != vocab_size:
        return False
    if source == "embedded":
        return src.get("kind") == "embedded" and src.get("sha256") == embedded_corpus_sha256()
    return Path(source).exists() and src.get("file_sha256") == file_sha256(Path(source))


def cmd_run(args) -> int:
    dist = init_distributed()
    run_dir = Path(args.out)
    if args.config:
        cfg = load_json(args.config)
    else:
        cfg = load_preset(args.preset or default_preset(dist.world_size))
    overrides = parse_set_args(args.set)
    if args.seed is not None:
        overrides["train.seed"] = args.seed
    if args.peer_mode is not None:
        overrides["ttt.peer_mode"] = args.peer_mode
    if overrides:
        cfg = cfg.replace(overrides)
    if run_dir.exists() and any(run_dir.iterdir()) and not args.overwrite:
        raise ConfigError(f"{run_dir}: run directory is not empty (pass --overwrite to start over)")
    if is_main() and run_dir.exists() and args.overwrite:
        shutil.rmtree(run_dir)
    barrier()
    run_dir.mkdir(parents=True, exist_ok=True)
    # Beside the run dir, not in it: `train --overwrite` may clear the run dir.
    cfg_path = run_dir.with_name(run_dir.name + "-config.json")
    if is_main():
        cfg_path.write_text(cfg.to_json() + "\n")
    barrier()

    phases: dict[str, float] = {}
    t0 = time.perf_counter()
    data_dir = _prepare_data(args, run_dir, cfg.model.vocab_size)
    phases["data"] = time.perf_counter() - t0

    t = time.perf_counter()
    _run_verb(["train", "--data", str(data_dir), "--config", str(cfg_path), "--out", str(run_dir), "--overwrite"])
    phases["train"] = time.perf_counter() - t

    t = time.perf_counter()
    _run_verb(["quantize", str(run_dir)])
    phases["quantize"] = time.perf_counter() - t

    t = time.perf_counter()
    ev = ["eval", str(run_dir), "--data", str(data_dir)]
    if cfg.ttt.enabled:
        ev.append("--ttt")
    _run_verb(ev)
    phases["eval"] = time.perf_counter() - t

    if not args.no_pack:
        t = time.perf_counter()
        if is_main():
            _run_verb(["pack", str(run_dir), "--out", str(run_dir / "record")])
        barrier()
        phases["pack"] = time.perf_counter() - t
    phases["total"] = time.perf_counter() - t0

    rep = update_report(run_dir, {"pipeline_phase_seconds": {k: round(v, 2) for k, v in phases.items()},
                                  "data_dir": str(data_dir)})
    if is_main():
        _plot(run_dir)
        print(summary_table(rep))
        _audit(run_dir)
    return 0


def _audit(run_dir: Path) -> None:
    """The audit's verdict under the summary (FAIL/WARN lines only); `pgolf audit RUN` prints every check.

    The packed train_gpt.py leaves the audit out, so there it is skipped.
    """
    try:
        from pgolf.audit import FAIL, PASS, audit_paths
    except ImportError:
        return
    checks = audit_paths([run_dir])
    for c in checks:
        if c.status != PASS:
            print(f"audit {c.status} {c.name} {c.subject}: {c.detail}")
    n_fail = sum(c.status == FAIL for c in checks)
    print(f"audit: {len(checks)} checks, {sum(c.status == PASS for c in checks)} pass, {n_fail} fail "
          f"(`pgolf audit {run_dir}` for the table)")


def _plot(run_dir: Path) -> None:
    """Loss curve next to the logs; plotting is optional and never fails the run."""
    try:
        from pgolf.plots import plot_training

        path = plot_training(run_dir)
        if path:
            print(f"plot: {path}")
    except ImportError:
        pass


def _fmt(v, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def summary_table(rep: dict) -> str:
    """The table `pgolf run` ends with."""
    rows = [
        ("pre-quant (EMA) val_bpb", _fmt(rep.get("val_bpb_prequant", rep.get("val_bpb")), ".5f")),
        ("quantized roundtrip val_bpb", _fmt(rep.get("val_bpb_roundtrip"), ".5f")),
        ("TTT (own-only) val_bpb", _fmt(rep.get("val_bpb_ttt"), ".5f")),
        (f"TTT + ensemble ({rep.get('peer_mode', '-')}) val_bpb", _fmt(rep.get("val_bpb_ttt_ensemble"), ".5f")),
        ("route fraction", _fmt(rep.get("route_fraction"), ".3f")),
        ("coverage tokens", f"{rep.get('coverage_tokens', '-')}/{rep.get('target_tokens', '-')}"),
        ("artifact bytes (code + model)", _fmt(rep.get("artifact_bytes"), ",d")),
        ("  code bytes", _fmt(rep.get("code_bytes"), ",d")),
        ("  model bytes", _fmt(rep.get("model_bytes"), ",d")),
        ("model params", _fmt(rep.get("model_params"), ",d")),
        ("train steps", _fmt(rep.get("steps"), ",d")),
    ]
    for name, secs in (rep.get("pipeline_phase_seconds") or {}).items():
        rows.append((f"seconds: {name}", _fmt(secs, ".1f")))
    width = max(len(r[0]) for r in rows)
    line = "-" * (width + 16)
    out = [line, "pgolf run summary", line]
    out += [f"{k:<{width}}  {v:>12}" for k, v in rows]
    if rep.get("peer_compliant") is False:
        out.append("NOTE: the peer ensemble ran in 'seed' mode, which is NOT compliant (C1, C4).")
    out.append(line)
    return "\n".join(out)


def print_summary(run_dir: str | Path) -> None:
    print(summary_table(read_report(run_dir)))
