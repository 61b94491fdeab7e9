"""The verbs: each takes the parsed arguments, resolves the config once, calls the library and prints.

Nothing here computes a figure: training, quantization, evaluation, data checks and
submission tooling all live below this layer. A verb's job is the command line's
contract: which config it runs with (`resolve_config`), which run directory it writes,
and what a person reads at the end.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pgolf.app import envknobs
from pgolf.app.progress import EvalProgress, chain
from pgolf.check import check_data, format_table, require_shards
from pgolf.config import RunConfig, parse_set_args, resolve
from pgolf.data import load_val
from pgolf.bpb import BpbMeter
from pgolf.distributed import all_reduce_sum, cleanup, get_dist, init_distributed, is_main, print0
from pgolf.download import download
from pgolf.errors import ArtifactError, ConfigError, DataError
from pgolf.evaluate import ScoredHook, diag_line, eval_packed, load_scored_model, model_device, sync, ttt_phase
from pgolf.ngram_tilt import NgramTilt
from pgolf.prepare import prepare_data, summary_lines
from pgolf.quantize import quantize_run
from pgolf.rundir import RunDir
from pgolf.runlog import RunLog
from pgolf.submission import audit, pack, record, significance, upstream_log
from pgolf.submission.tracks import choose_track
from pgolf.train import clear_results, train
from pgolf.vocabulary import check_run_data, data_vocab, training_vocab


def _env(args, base: RunConfig | str | Path) -> tuple[RunConfig | str | Path, dict | None]:
    """(base, the seed's env knobs as fields) with --env, else (base, None)."""
    if not args.env:
        return base, None
    base = resolve(base)
    return base, envknobs.env_overrides(os.environ, base)


def resolve_config(args, base: RunConfig | str | Path, **flags) -> RunConfig:
    """`base`, then the seed's env knobs (with --env), then --set, then the verb's own flags."""
    base, env = _env(args, base)
    if env is not None:
        for line in envknobs.ignored_knobs(os.environ):
            print0(f"env: ignored {line}")
    return resolve(base, env=env, sets=args.set, flags=flags)


def explicitly_set(args, base: RunConfig | str | Path, key: str) -> bool:
    """Whether the user named `key` (a dotted field): a config file as the base (every field of a
    config.json is the user's), a --set, or a seed env knob under --env. A preset's value is a default,
    not a choice: presets are sized for a data recipe, and a data directory may follow another one."""
    if not isinstance(base, str) or base.endswith(".json"):
        return True
    _, env = _env(args, base)
    return key in parse_set_args(list(args.set or ())) or key in (env or {})


# --------------------------------------------------------------------------- data
def cmd_prepare(args) -> int:
    t0 = time.perf_counter()
    out_dir = Path(args.out)
    manifest = prepare_data(source=args.source, out_dir=out_dir, vocab_size=args.vocab_size, val_docs=args.val_docs,
                            caseops=args.caseops, shard_tokens=args.shard_tokens, overwrite=args.overwrite,
                            progress=True, tokenizer=args.tokenizer)
    print("\n".join(summary_lines(out_dir, manifest, time.perf_counter() - t0)))
    return 0


def cmd_download(args) -> int:
    m = download(args.variant, args.out, args.train_shards, repo_id=args.repo_id, local_hub=args.local_hub)
    print(f"downloaded {m['source']['dataset']} from {m['source']['repo_id']} into {args.out}")
    print(f"  val    {m['num_val_docs']:>10,} docs {m['num_val_tokens']:>14,} tokens {m['num_val_shards']} shard(s)"
          f"  bytes: {m['byte_source']}")
    print(f"  train  {m['num_train_docs']:>10,} docs {m['num_train_tokens']:>14,} tokens "
          f"{m['num_train_shards']} shard(s)")
    print(f"  tokenizer {m['tokenizer']} (vocab {m['vocab_size']}, caseops {'on' if m['caseops'] else 'off'}); "
          f"{m['num_files_fetched']} file(s) fetched, the rest already present; {m['seconds']:.1f} s")
    print(f"  next: pgolf data check {args.out}")
    return 0


def cmd_check(args) -> int:
    results = check_data(args.dir, tokenizer=args.tokenizer, progress=True)
    print(format_table(results))
    failed = [r for r in results if not r.ok]
    if failed:
        raise DataError(f"{len(failed)} of {len(results)} checks failed; first: {failed[0].name}: {failed[0].detail}")
    print(f"{args.dir}: all {len(results)} checks passed")
    return 0


# --------------------------------------------------------------------------- train / quantize / eval
def train_config(args) -> RunConfig:
    """--config, or the run's own config.json with --resume, or --preset; then env, --set and the flags.

    The vocabulary follows the data's tokenizer unless the user set it (`explicitly_set`); a set value
    that differs from the data's is refused in one line (`training_vocab`)."""
    own = RunDir(args.out).config
    base = Path(args.config) if args.config else (own if args.resume and own.exists() else args.preset)
    flags = {"train.iterations": args.max_steps, "train.max_wallclock_seconds": args.max_seconds,
             "train.seed": args.seed}
    return follow_data_vocab(args, base, resolve_config(args, base, **flags), args.data)


def follow_data_vocab(args, base: RunConfig | str | Path, cfg: RunConfig, data_dir) -> RunConfig:
    """`cfg` with the vocabulary of DATA_DIR's tokenizer unless the user set it (`explicitly_set`); a set value
    that differs from the data's is refused in one line (`training_vocab`)."""
    vocab = training_vocab(cfg.model.vocab_size, explicitly_set(args, base, "model.vocab_size"), data_dir)
    if vocab == cfg.model.vocab_size:
        return cfg
    print0(f"model.vocab_size: {vocab}, from {data_dir}'s tokenizer (the preset has {cfg.model.vocab_size})")
    return resolve(cfg, flags={"model.vocab_size": vocab})


def eval_config(args) -> RunConfig:
    """The run's own config.json, then env, --set, --peer-mode and --peer-k."""
    return resolve_config(args, RunDir(args.run_dir).read_config(),
                          **{"ttt.peer_mode": args.peer_mode, "ttt.peer_k": args.peer_k})


def cmd_preset_show(args) -> int:
    """`pgolf preset show NAME [--set ...]`: the resolved config, every field, as JSON."""
    print(resolve_config(args, args.name).to_json())
    return 0


def cmd_train(args) -> int:
    """`pgolf train`: resolve the config, guard the run directory, train, print a summary.

    With --resume and no --config the base is the run's own config.json (not --preset), so
    `pgolf train --resume --out RUN --data D` continues as it started; anything layered on top
    that changes the config is then refused by `train` with the fields listed.
    """
    run = RunDir(args.out)
    cfg = train_config(args)
    require_shards(args.data)  # before the run directory is touched: bad data leaves nothing behind
    init_distributed()
    clear_results(run, args.resume, args.overwrite)
    try:
        s = train(cfg, args.data, run.path, resume=args.resume)
        if is_main():  # what eval and quantize check a data directory against
            run.update_report(tokenizer_sha256=data_vocab(args.data).tokenizer_sha256)
        cap_s = cfg.train.max_wallclock_seconds
        end_s = s["train_seconds"] + s["calibration_seconds"]
        where = ("inside" if end_s <= cap_s else f"OUTSIDE (ends at {end_s:.1f} s)") if cap_s > 0 else "without"
        print0(
            f"\ntrained {cfg.preset}: {s['steps']} steps in {s['train_seconds']:.1f} s "
            f"({s['tokens_per_second']:,.0f} tokens/s), {s['model_params']:,} parameters\n"
            f"  val bpb {s['val_bpb_prequant']:.4f} (EMA)   {s['val_bpb_pre_ema']:.4f} (raw weights)   "
            f"last train loss {s['final_train_loss']:.4f}\n"
            f"  calibration {s['calibration_seconds']:.1f} s {where} the wallclock cap; wrote {run.final_model}, "
            f"{run.calibration.name}, {run.checkpoint.name}, {run.report.name}")
    finally:
        cleanup()  # after the last print0: it would start a new process group
    return 0


def cmd_quantize(args) -> int:
    run = RunDir(args.run_dir)
    cfg = resolve(run.read_config(), flags={"quant.compressor": args.compressor})
    if not args.no_eval:
        _check_data(run, cfg, run.data_dir())
    init_distributed()
    quantize_run(cfg, run, code_bytes=pack.packed_code_bytes(cfg.to_json()), evaluate=not args.no_eval)
    return 0


def _check_data(run: RunDir, cfg: RunConfig, data_dir: Path) -> None:
    """Refuse data cut by another tokenizer than the run's (hash when recorded, else vocabulary size)."""
    check_run_data(run.read_report().tokenizer_sha256, cfg.model.vocab_size, data_dir)


def dump_paths(spec: str | Path) -> dict[str, Path]:
    """Where --dump-nll writes: an existing directory (or one spelled with a trailing '/')
    gets DIR/nll.npy, DIR/bytes.npy, DIR/positions.npy (+ nll_own.npy, score_counts.npy after
    TTT); anything else is a prefix: FILE.nll.npy, FILE.bytes.npy, ... (a trailing .npy is dropped)."""
    text = str(spec)
    path = Path(text)
    names = ("nll", "bytes", "positions", "nll_own", "score_counts")
    if path.is_dir() or text.endswith(("/", "\\")):
        return {n: path / f"{n}.npy" for n in names}
    stem = text[:-4] if text.endswith(".npy") else text
    return {n: Path(f"{stem}.{n}.npy") for n in names}


def _write_dump(spec: str, arrays: dict) -> list[Path]:
    paths = dump_paths(spec)
    written = []
    for name, arr in arrays.items():
        if arr is None:
            continue
        paths[name].parent.mkdir(parents=True, exist_ok=True)
        np.save(paths[name], arr)
        written.append(paths[name])
    return written


class NllCollector:
    """Per-target NLL of a diagnostic eval, gathered to every rank (zeros where another rank scored)."""

    def __init__(self, num_targets: int):
        self.nll = torch.zeros(num_targets, dtype=torch.float32)

    def __call__(self, first: int, nll: Tensor) -> None:
        self.nll[first:first + nll.numel()] = nll.detach().float().cpu()

    def gathered(self) -> Tensor:
        return all_reduce_sum(self.nll.to(get_dist().device)).cpu()


def timed_eval(model, val, cfg: RunConfig, hook: ScoredHook | None = None,
               label: str = "eval", tilt: NgramTilt | None = None) -> tuple[BpbMeter, float]:
    """`eval_packed` with the device synchronised around the timer (and a progress bar on a terminal)."""
    device = model_device(model)
    bar = EvalProgress(val, label)
    sync(device)
    t0 = time.perf_counter()
    try:
        meter = eval_packed(model, val, cfg.eval, on_scored=chain(hook, bar.packed if bar.enabled else None),
                            tilt=tilt)
        sync(device)
    finally:
        bar.close()
    return meter, time.perf_counter() - t0


def cmd_eval(args) -> int:
    """`pgolf eval RUN_DIR [--ttt] [--peer-mode M] [--peer-k K] [--prequant] [--dump-nll FILE]`.

    Always: load the artifact (or, with --prequant, the EMA weights) and run the diagnostic
    packed eval. With --ttt: score-first LoRA TTT with the config's peer ensemble, logging
    own-only and ensemble bpb, coverage and route fraction in the seed's line formats. Phases
    are timed separately and everything lands in RUN/report.json (and RUN/eval.jsonl). A
    `pr2139`-mode ensemble is labelled NON-COMPLIANT. --dump-nll: see `dump_paths` (committed
    NLL float32, target bytes int32, stream position int64 of each target token).
    """
    init_distributed()
    run = RunDir(args.run_dir)
    cfg = eval_config(args)
    _check_data(run, cfg, run.data_dir(args.data))
    val = load_val(run.data_dir(args.data), include_tail=cfg.eval.include_tail,
                   val_docs_limit=cfg.eval.val_docs_limit, seq_len=cfg.eval.eval_seq_len)
    log = RunLog(run.eval_log)
    phases: dict[str, float] = {}
    fields: dict = {"target_tokens": val.num_targets, "target_bytes": val.target_bytes_total}
    log.info(f"val_tokens: {val.num_targets}")

    model, phases["eval_load_s"] = load_scored_model(run, cfg, prequant=args.prequant)
    log.info(f"Deserialize: {'load' if args.prequant else 'decompression'} done in {phases['eval_load_s']:.1f}s")
    hook = NllCollector(val.num_targets) if args.dump_nll and not args.ttt else None
    # Without TTT the packed eval is the score, so it carries the n-gram tilt (statistics in its stream order).
    tilt = None if args.ttt else NgramTilt.build(cfg.eval, val.tokens)
    meter, phases["eval_diagnostic_s"] = timed_eval(model, val, cfg, hook, tilt=tilt)
    label = "diagnostic pre-quantization post-ema" if args.prequant else "diagnostic quantized"
    key = "prequant" if args.prequant else "roundtrip"
    if tilt is not None:
        g = tilt.figures(lambda t: all_reduce_sum(t.to(get_dist().device)))
        untilted = meter.bpb() * g["ngram_nats_untilted"] / meter.sum_nats
        log.info(diag_line(f"{label} ngram_tilt:{g['ngram_tilt']}", meter, phases["eval_diagnostic_s"]))
        log.info(f"ngram_tilt: gated:{g['ngram_gated']}/{val.num_targets} hits:{g['ngram_hits']} "
                 f"untilted val_bpb:{untilted:.8f}")
        fields.update(ngram=g | {"val_bpb_tilted": meter.bpb()}, **{f"val_bpb_{key}": untilted,
                      f"val_loss_{key}": g["ngram_nats_untilted"] / g["ngram_scored"]})
    else:
        log.info(diag_line(label, meter, phases["eval_diagnostic_s"]))
        fields.update({f"val_bpb_{key}": meter.bpb(), f"val_loss_{key}": meter.loss()})

    dumped: dict = {}
    if hook is not None:
        positions = torch.arange(1, val.num_targets + 1, dtype=torch.int64)
        dumped = {"nll": hook.gathered().numpy(), "bytes": val.token_bytes[1:].numpy().astype("int32"),
                  "positions": positions.numpy()}
    if args.ttt:
        bar = EvalProgress(val, "ttt")
        try:
            ttt_fields, ttt_phases, ttt_dumped = ttt_phase(model, val, cfg, log, args.prequant,
                                                           dump=bool(args.dump_nll),
                                                           on_batch=bar.ttt if bar.enabled else None)
        finally:
            bar.close()
        fields.update(ttt_fields)
        phases.update(ttt_phases)
        dumped.update(ttt_dumped)

    run.update_report(**fields, phase_seconds={k: round(v, 3) for k, v in phases.items()})
    if args.dump_nll and is_main():
        for p in _write_dump(args.dump_nll, dumped):
            log.info(f"dump-nll: wrote {p}")
    log.close()
    return 0


# --------------------------------------------------------------------------- submission
def cmd_size(args) -> int:
    b = pack.size_breakdown(args.run_dir)
    print(pack.format_breakdown(b))
    if b["headroom_bytes"] < 0:
        raise ArtifactError(pack.over_cap_message(b, str(args.run_dir)))
    return 0


def _submitter(args) -> dict:
    """author / github_id / name: the --submitter file, then the flags."""
    who: dict = {}
    if args.submitter:
        try:
            who = json.loads(Path(args.submitter).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{args.submitter}: not a readable JSON file ({e})") from None
        if not isinstance(who, dict) or set(who) - {"author", "github_id", "name"}:
            raise ConfigError(f"{args.submitter}: expected an object with author, github_id and name only")
    flags = {"author": args.author, "github_id": args.github_id, "name": args.name}
    return {**who, **{k: v for k, v in flags.items() if v is not None}}


def _baseline_comparison(candidate_items: list[str], baseline_items: list[str] | None) -> dict | None:
    """significance.comparison of the candidate's seeds with --baseline (None without one)."""
    if not baseline_items:
        return None
    candidate = significance.read_groups(candidate_items)
    baseline = significance.read_groups(baseline_items)
    return significance.comparison(candidate, baseline, " ".join(baseline_items))


def cmd_pack(args) -> int:
    """`pgolf pack RUN... --out DIR [--track T] [--baseline PATH...]`: everything is read and checked
    (configs, sizes, the baseline) before the folder is written."""
    track = choose_track(args.track, Path(args.out))
    comparison = _baseline_comparison([str(RunDir(r).report) for r in args.run_dirs], args.baseline)
    if len(args.run_dirs) > 1:
        sizes = record.pack_seeds(args.run_dirs, args.out, _submitter(args), track, comparison)
    else:
        sizes = record.pack_record(args.run_dirs[0], args.out, _submitter(args), track, comparison)
    print(pack.format_breakdown(sizes))
    sub = json.loads((Path(args.out) / "submission.json").read_text())
    chosen = record.record_track(RunDir(args.run_dirs[0]).read_config(), track)
    print(f"record folder: {args.out} ({pack.RECORD_CODE_NAME} {sizes['code_bytes']:,} bytes, "
          f"total {sizes['artifact_bytes']:,} of {sizes['size_cap_bytes']:,})")
    print(f"track: {chosen.name} (submission.json \"track\": {sub['track']!r}); upstream folder: "
          f"{chosen.suggested_folder(sub['date'], Path(args.out).name.split('_', 1)[-1])}")
    for line in significance.comparison_lines(comparison) if comparison else []:
        print(line)
    return 0


def cmd_significance(args) -> int:
    """Per-seed figures from numbers, runs, record folders or logs; Welch's verdict and the maintainers' test."""
    candidate = significance.read_groups(args.candidate)
    baseline = significance.read_groups(args.baseline)
    v = significance.decide(candidate, baseline, args.min_delta_nats)
    print(significance.format_verdict(candidate, baseline, v))
    return 0


def cmd_audit(args) -> int:
    """`pgolf audit PATH... [--strict] [--json] [--baseline PATH...]`: exit 1 on any FAIL (and on any WARN
    with --strict); bad input (unreadable or cut-off logs, no logs, a broken submission.json) exits 2."""
    checks = audit.audit_paths(args.paths)
    if args.baseline:
        checks += audit.significance_checks(args.paths, significance.read_groups(args.baseline),
                                            " ".join(args.baseline))
    print(audit.format_json(checks) if args.json else audit.format_checks(checks))
    bad = {audit.FAIL, audit.WARN} if args.strict else {audit.FAIL}
    return 1 if any(c.status in bad for c in checks) else 0


def cmd_preset_from_log(args) -> int:
    """`pgolf preset from-log LOG --out FILE.json`: the log's hyperparameter block as a config; every
    entry it cannot map is listed, one line each."""
    path = Path(args.log)
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise DataError(f"{path}: cannot read the log ({e})") from None
    hp = upstream_log.hyperparameter_block(text, path)
    cfg, unmapped = envknobs.from_hyperparameters(hp, resolve(args.preset))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(cfg.to_json() + "\n")
    print(f"{out}: {len(hp) - len(unmapped)} of {len(hp)} hyperparameters mapped onto preset {cfg.preset}'s "
          f"config; {len(unmapped)} cannot be mapped" + (":" if unmapped else ""))
    for line in unmapped:
        print(f"  cannot map {line}")
    print(f"  next: pgolf train --config {out} --data DIR --out RUN")
    return 0
