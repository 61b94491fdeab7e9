"""`pgolf run`: every stage in order, in one process, with one resolved config.

    data prepare + data check -> train -> quantize -> TTT eval -> pack -> plot, summary, audit

The middle three stages are `pgolf.record_run.record_run`, the very function a packed
train_gpt.py runs, so `pgolf run` and a record folder cannot drift apart. Packing comes
after the evaluation so the record folder carries the final numbers and logs. Under
`torchrun` every rank runs every stage; stages that only write files (data prepare,
pack, plot) run on rank 0 behind a barrier.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path


from pgolf.app.plots import plot_training
from pgolf.app.summary import summary_table
from pgolf.app.verbs import follow_data_vocab, resolve_config
from pgolf.check import check_data, require_shards
from pgolf.device import default_device
from pgolf.corpus import embedded_corpus_sha256
from pgolf.distributed import barrier, cleanup, init_distributed, is_main, print0
from pgolf.errors import ConfigError, DataError
from pgolf.prepare import prepare_data
from pgolf.record_run import record_run
from pgolf.rundir import RunDir
from pgolf.submission import audit, pack, record
from pgolf.tokenizer import file_sha256
from pgolf.vocabulary import data_vocab


def default_preset() -> str:
    """`seed` on GPUs (the record's configuration), `cpu` otherwise."""
    return "seed" if default_device().type == "cuda" else "cpu"


def _prepare_data(args, run: RunDir, vocab_size: int) -> Path:
    """Prepare (rank 0) or reuse, then check, the data directory for this run; `--data` is used as given."""
    if args.data:
        return Path(args.data)
    data_dir = run.path.parent / f"{run.path.name}-data"
    manifest = data_dir / "manifest.json"
    reuse = manifest.exists() and _same_source(json.loads(manifest.read_text()), args.source, vocab_size)
    if is_main():
        if reuse:
            print0(f"data: reusing {data_dir} (same source and vocabulary)")
        else:
            prepare_data(source=args.source, out_dir=data_dir, vocab_size=vocab_size, val_docs=100, caseops=True,
                         shard_tokens=100_000_000, overwrite=True, progress=True)
        # Nothing is trained on a directory that fails its checks (overlap, sidecars, ids, hashes).
        failed = [r for r in check_data(data_dir, progress=True) if not r.ok]
        if failed:
            raise DataError(f"{data_dir}: {len(failed)} data check(s) failed; first: {failed[0].name}: "
                            f"{failed[0].detail}")
    barrier()
    return data_dir


def _same_source(manifest: dict, source: str, vocab_size: int) -> bool:
    """True when an existing data dir was prepared from this very source with this vocabulary."""
    src = manifest.get("source", {})
    if manifest.get("vocab_size") != vocab_size:
        return False
    if source == "embedded":
        return src.get("kind") == "embedded" and src.get("sha256") == embedded_corpus_sha256()
    return Path(source).exists() and src.get("file_sha256") == file_sha256(Path(source))


def cmd_run(args) -> int:
    init_distributed()
    try:
        return _run(args)
    finally:
        cleanup()  # after the summary: printing on rank 0 would start a new process group


def _run(args) -> int:
    run = RunDir(args.out)
    base = Path(args.config) if args.config else (args.preset or default_preset())
    cfg = resolve_config(args, base, **{"train.seed": args.seed, "ttt.peer_mode": args.peer_mode})
    if args.data:  # checked before the run directory is touched; the vocabulary follows the data as in `train`
        require_shards(args.data)
        cfg = follow_data_vocab(args, base, cfg, args.data)
    if run.path.exists() and any(run.path.iterdir()) and not args.overwrite:
        raise ConfigError(f"{run.path}: run directory is not empty (pass --overwrite to start over)")
    if is_main() and run.path.exists() and args.overwrite:
        shutil.rmtree(run.path)
    barrier()
    run.path.mkdir(parents=True, exist_ok=True)

    phases: dict[str, float] = {}
    t0 = time.perf_counter()
    data_dir = _prepare_data(args, run, cfg.model.vocab_size)
    phases["data"] = time.perf_counter() - t0
    t = time.perf_counter()
    record_run(cfg, data_dir, run, code_bytes=pack.packed_code_bytes(cfg.to_json()))
    phases["train_quantize_eval"] = time.perf_counter() - t
    if not args.no_pack:
        t = time.perf_counter()
        if is_main():
            record.pack_record(run.path, run.record)
        phases["pack"] = time.perf_counter() - t
    phases["total"] = time.perf_counter() - t0
    rep = run.update_report(pipeline_phase_seconds={k: round(v, 2) for k, v in phases.items()},
                            data_dir=str(Path(data_dir).resolve()),
                            tokenizer_sha256=data_vocab(data_dir).tokenizer_sha256)
    if is_main():
        plot = plot_training(run.path)
        if plot:
            print(f"plot: {plot}")
        print(summary_table(rep))
        _audit(run)
    return 0


def _audit(run: RunDir) -> None:
    """The audit's verdict under the summary (FAIL/WARN lines only); `pgolf audit RUN` prints every check."""
    checks = audit.audit_paths([run.path])
    for c in checks:
        if c.status != audit.PASS:
            print(f"audit {c.status} {c.name} {c.subject}: {c.detail}")
    n_fail = sum(c.status == audit.FAIL for c in checks)
    print(f"audit: {len(checks)} checks, {sum(c.status == audit.PASS for c in checks)} pass, {n_fail} fail "
          f"(`pgolf audit {run.path}` for the table)")
