"""Evaluation: every validation target scored exactly once, into one `BpbMeter`.

Two diagnostic evaluations share one packing idea: a batch of targets becomes a
single packed row whose `cu_seqlens` starts a new segment at every BOS, so
attention never crosses a document boundary and a GPT forward over the row
gives the same NLL as running each piece on its own.

- `eval_packed` (the seed's rewritten `eval_val`): rank r owns the contiguous
  target range [T*r/W, T*(r+1)/W) and walks it in batches of
  local_batch_seqs * eval_seq_len targets; segments longer than eval_seq_len
  are split, and a document cut by a batch edge loses its earlier context.
  Nothing is truncated: the last batch of a rank is partial.
- `eval_sliding`: windows of seq_len tokens at a stride; each window scores only
  its last `stride` targets (the first window scores all of its targets, the
  last one whatever is left), so every target is scored once with at least
  seq_len - stride tokens of context (within its document).

Target j predicts `val.tokens[j+1]` from `val.tokens[:j+1]` and costs
`val.token_bytes[j+1]` bytes (0 for a BOS target), j = 0 .. T-1 with T = N-1.

`cmd_eval` (the `pgolf eval` verb) loads a run's artifact and reports roundtrip,
pre-quant, TTT and TTT + ensemble bpb with per-phase seconds; see its docstring.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from pgolf.bpb import BpbMeter
from pgolf.config import EvalConfig, RunConfig, load_json, parse_set_args
from pgolf.distributed import all_reduce_sum, autocast, get_dist, init_distributed, is_main
from pgolf.errors import ArtifactError, ConfigError
from pgolf.loader import build_cu_seqlens

BOS_ID = 1
CU_BUCKET = 64
"""cu_seqlens entry counts are padded to a multiple of this (fewer distinct shapes to compile)."""

# A callback told about every scored span: (first target index, per-target NLL in nats [n] fp32).
ScoredHook = Callable[[int, Tensor], None]


# --------------------------------------------------------------------------- packing helpers
def rank_target_range(num_targets: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous targets [start, end) rank `rank` scores (integer division, as the seed)."""
    return num_targets * rank // world_size, num_targets * (rank + 1) // world_size


def packed_batches(num_targets: int, cfg: EvalConfig, rank: int, world_size: int) -> list[tuple[int, int]]:
    """Target ranges [start, end) of this rank's packed batches, in order; the last may be partial."""
    local_batch_seqs = max(1, cfg.val_batch_tokens // world_size // cfg.eval_seq_len)
    batch_targets = local_batch_seqs * cfg.eval_seq_len
    start, end = rank_target_range(num_targets, rank, world_size)
    return [(s, min(s + batch_targets, end)) for s in range(start, end, batch_targets)]


def sliding_windows(num_targets: int, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
    """(window_start, score_start, end) target indices of every sliding window.

    Windows start at multiples of `stride` and cover [window_start, end) with
    end = min(window_start + seq_len, num_targets); each scores its last `stride`
    targets [window_start + seq_len - stride, end), the first window all of them.
    The scored ranges tile [0, num_targets) exactly once, and stride == seq_len
    gives plain non-overlapping windows.
    """
    assert 0 < stride <= seq_len, (stride, seq_len)
    if num_targets <= 0:
        return []
    out = [(0, 0, min(seq_len, num_targets))]
    window_start = stride
    while window_start + seq_len - stride < num_targets:
        out.append((window_start, window_start + seq_len - stride, min(window_start + seq_len, num_targets)))
        window_start += stride
    return out


# --------------------------------------------------------------------------- scoring
def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _score_row(model: nn.Module, x: Tensor, y: Tensor, cu_seqlens: Tensor, max_seqlen: int) -> Tensor:
    """Per-target NLL (nats, fp32) [n] of one packed row."""
    device = _model_device(model)
    with autocast(device):
        nll = model(x.to(device)[None], y.to(device)[None], cu_seqlens=cu_seqlens.to(device),
                    max_seqlen=max_seqlen, reduction="none")
    return nll.reshape(-1).float()


def _finish(meter: BpbMeter) -> BpbMeter:
    meter.all_reduce()
    return meter


def eval_packed(model: nn.Module, val, cfg: EvalConfig, meter: BpbMeter | None = None, *,
                on_scored: ScoredHook | None = None) -> BpbMeter:
    """Score all `val.num_targets` targets in packed batches; returns the all-reduced meter.

    With `cfg.sliding_stride > 0` this is `eval_sliding(model, val, cfg.eval_seq_len,
    cfg.sliding_stride)` instead (the config's switch). `meter`, if given, must hold only
    this rank's sums: it is all-reduced at the end. `on_scored(first_target, nll)` sees
    every scored span (for NLL dumps). Every rank must call this (collective).
    """
    if cfg.sliding_stride > 0:
        batch_tokens = max(cfg.eval_seq_len, cfg.val_batch_tokens // get_dist().world_size)
        return eval_sliding(model, val, cfg.eval_seq_len, cfg.sliding_stride, meter=meter,
                            batch_tokens=batch_tokens, on_scored=on_scored)
    meter = meter if meter is not None else BpbMeter()
    d = get_dist()
    tokens, token_bytes = val.tokens, val.token_bytes
    with _eval_mode(model):
        for start, end in packed_batches(val.num_targets, cfg, d.rank, d.world_size):
            x = tokens[start:end]
            y = tokens[start + 1:end + 1]
            cu_seqlens, max_seqlen = build_cu_seqlens(x, cfg.eval_seq_len)
            nll = _score_row(model, x, y, cu_seqlens, max_seqlen)
            meter.add(nll, token_bytes[start + 1:end + 1].to(nll.device))
            if on_scored is not None:
                on_scored(start, nll)
    return _finish(meter)


def eval_sliding(model: nn.Module, val, seq_len: int, stride: int, *, meter: BpbMeter | None = None,
                 batch_tokens: int = 65_536, on_scored: ScoredHook | None = None) -> BpbMeter:
    """Sliding-window eval: windows of `seq_len` at `stride`, each target scored once.

    Several windows are packed into one row of at most max(batch_tokens, seq_len)
    tokens, each window its own segment(s) (a window starts a segment; so does each
    BOS inside it). Ranks take contiguous runs of windows. Collective.
    """
    if not 0 < stride <= seq_len:
        raise ConfigError(f"eval.sliding_stride: {stride} must be in (0, seq_len={seq_len}]")
    meter = meter if meter is not None else BpbMeter()
    d = get_dist()
    windows = sliding_windows(val.num_targets, seq_len, stride)
    lo, hi = rank_target_range(len(windows), d.rank, d.world_size)
    mine = windows[lo:hi]
    per_row = max(1, batch_tokens // seq_len)
    tokens, token_bytes = val.tokens, val.token_bytes
    with _eval_mode(model):
        for i in range(0, len(mine), per_row):
            group = mine[i:i + per_row]
            xs, ys, starts, offset = [], [], [], 0
            for ws, _, end in group:
                xs.append(tokens[ws:end])
                ys.append(tokens[ws + 1:end + 1])
                starts.append(offset)
                offset += end - ws
            x, y = torch.cat(xs), torch.cat(ys)
            cu_seqlens, max_seqlen = build_cu_seqlens(x, seq_len, starts=starts)
            nll_row = _score_row(model, x, y, cu_seqlens, max_seqlen)
            for (ws, ss, end), row_start in zip(group, starts):
                nll = nll_row[row_start + ss - ws:row_start + end - ws]
                meter.add(nll, token_bytes[ss + 1:end + 1].to(nll.device))
                if on_scored is not None:
                    on_scored(ss, nll)
    return _finish(meter)


# --------------------------------------------------------------------------- the eval verb
ARTIFACT_NAME = "final_model.int6.ptz"
PREQUANT_NAME = "final_model.pt"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def load_eval_model(run_dir: str | Path, prequant: bool = False, cfg: RunConfig | None = None) -> tuple[nn.Module, float]:
    """(GPT on this rank's device with looping on, seconds spent loading and decompressing).

    prequant=False reads RUN/final_model.int6.ptz (never unpickles), dequantizes it
    and loads the weights into a fresh GPT of the run's model config; prequant=True
    loads the EMA weights RUN/final_model.pt. `cfg` defaults to RUN/config.json.
    """
    from pgolf.checkpoint import import_record_state_dict, load_model
    from pgolf.quant.artifact import read_artifact
    from pgolf.quant.mixed import dequantize_state_dict

    run_dir = Path(run_dir)
    cfg = cfg if cfg is not None else _run_config(run_dir)
    device = get_dist().device
    t0 = time.perf_counter()
    if prequant:
        path = run_dir / PREQUANT_NAME
        if not path.exists():
            raise ArtifactError(f"{path}: pre-quantization model not found (train the run first)")
        model = load_model(path, cfg.model)
    else:
        path = run_dir / ARTIFACT_NAME
        if not path.exists():
            raise ArtifactError(f"{path}: artifact not found (run `pgolf quantize {run_dir}` first)")
        model = import_record_state_dict(dequantize_state_dict(read_artifact(path)), cfg.model)
    model = model.to(device)
    model.set_looping(True)  # the final model is evaluated as it was trained last: recurrent
    model.eval()
    _sync(device)
    return model, time.perf_counter() - t0


def _run_config(run_dir: Path) -> RunConfig:
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: run directory not found")
    path = run_dir / "config.json"
    if not path.exists():
        raise ConfigError(f"{path}: not found (is {run_dir} a pgolf run directory?)")
    return load_json(path)


def eval_config(args) -> RunConfig:
    """RUN/config.json, then --env knobs, then --set overrides, then --peer-mode / --peer-k."""
    cfg = _run_config(Path(args.run_dir))
    if getattr(args, "env", False):
        import os

        from pgolf.envknobs import config_from_env

        cfg = config_from_env(os.environ, cfg)
    overrides = parse_set_args(getattr(args, "set", None))
    if getattr(args, "peer_mode", None) is not None:
        overrides["ttt.peer_mode"] = args.peer_mode
    if getattr(args, "peer_k", None) is not None:
        overrides["ttt.peer_k"] = args.peer_k
    return cfg.replace(overrides) if overrides else cfg


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
    import numpy as np

    paths = dump_paths(spec)
    written = []
    for name, arr in arrays.items():
        if arr is None:
            continue
        paths[name].parent.mkdir(parents=True, exist_ok=True)
        np.save(paths[name], arr)
        written.append(paths[name])
    return written


class _NllCollector:
    """Per-target NLL of a diagnostic eval, gathered to every rank (zeros where another rank scored)."""

    def __init__(self, num_targets: int):
        self.nll = torch.zeros(num_targets, dtype=torch.float32)

    def __call__(self, first: int, nll: Tensor) -> None:
        self.nll[first:first + nll.numel()] = nll.detach().float().cpu()

    def gathered(self) -> Tensor:
        return all_reduce_sum(self.nll.to(get_dist().device)).cpu()


def _diag_line(label: str, meter: BpbMeter, seconds: float) -> str:
    return f"{label} val_loss:{meter.loss():.8f} val_bpb:{meter.bpb():.8f} eval_time:{int(round(seconds * 1000))}ms"


def _timed_eval(model, val, cfg: RunConfig, hook=None) -> tuple[BpbMeter, float]:
    device = _model_device(model)
    _sync(device)
    t0 = time.perf_counter()
    meter = eval_packed(model, val, cfg.eval, on_scored=hook)
    _sync(device)
    return meter, time.perf_counter() - t0


def cmd_eval(args) -> int:
    """`pgolf eval RUN_DIR [--ttt] [--peer-mode M] [--peer-k K] [--prequant] [--dump-nll FILE]`.

    Always: load the artifact (or, with --prequant, the EMA weights) and run the
    diagnostic packed eval. Without --ttt also the pre-quant diagnostic when
    RUN/final_model.pt exists. With --ttt: score-first LoRA TTT with the config's
    peer ensemble, logging own-only and ensemble bpb, coverage and route fraction
    in the seed's line formats. Phases are timed separately and everything lands
    in RUN/report.json (and RUN/eval.jsonl). A `seed`-mode ensemble is labelled
    NON-COMPLIANT. --dump-nll: see `dump_paths` (committed NLL float32, target bytes
    int32, stream position int64 of each target token).
    """
    from pgolf.data import load_val
    from pgolf.report import recorded_data_dir, update_report
    from pgolf.runlog import RunLog

    init_distributed()
    run_dir = Path(args.run_dir)
    cfg = eval_config(args)
    data_dir = recorded_data_dir(run_dir, getattr(args, "data", None))
    val = load_val(data_dir, include_tail=cfg.eval.include_tail, val_docs_limit=cfg.eval.val_docs_limit,
                   seq_len=cfg.eval.eval_seq_len)
    prequant = bool(getattr(args, "prequant", False))
    ttt = bool(getattr(args, "ttt", False))
    dump_spec = getattr(args, "dump_nll", None)
    log = RunLog(run_dir / "eval.jsonl")
    phases: dict[str, float] = {}
    fields: dict = {"target_tokens": val.num_targets, "target_bytes": val.target_bytes_total}
    log.info(f"val_tokens: {val.num_targets}")

    model, phases["eval_load_s"] = load_eval_model(run_dir, prequant=prequant, cfg=cfg)
    log.info(f"Deserialize: {'load' if prequant else 'decompression'} done in {phases['eval_load_s']:.1f}s")
    hook = _NllCollector(val.num_targets) if dump_spec and not ttt else None
    meter, phases["eval_diagnostic_s"] = _timed_eval(model, val, cfg, hook)
    label = "diagnostic pre-quantization post-ema" if prequant else "diagnostic quantized"
    log.info(_diag_line(label, meter, phases["eval_diagnostic_s"]))
    key = "prequant" if prequant else "roundtrip"
    fields.update({f"val_bpb_{key}": meter.bpb(), f"val_loss_{key}": meter.loss()})

    # The pre-quant figure goes beside the roundtrip one in every report (outside any TTT timer).
    if not prequant and (run_dir / PREQUANT_NAME).exists():
        fp_model, load_s = load_eval_model(run_dir, prequant=True, cfg=cfg)
        fp_meter, phases["eval_prequant_s"] = _timed_eval(fp_model, val, cfg)
        phases["eval_prequant_s"] += load_s
        del fp_model
        log.info(_diag_line("diagnostic pre-quantization post-ema", fp_meter, phases["eval_prequant_s"] - load_s))
        fields.update(val_bpb_prequant=fp_meter.bpb(), val_loss_prequant=fp_meter.loss())

    dumped: dict = {}
    if hook is not None:
        positions = torch.arange(1, val.num_targets + 1, dtype=torch.int64)
        dumped = {"nll": hook.gathered().numpy(), "bytes": val.token_bytes[1:].numpy().astype("int32"),
                  "positions": positions.numpy()}
    if ttt:
        fields.update(_run_ttt_phase(model, val, cfg, log, phases, prequant, dump=bool(dump_spec),
                                     dumped=dumped))

    fields["phase_seconds"] = {k: round(v, 3) for k, v in phases.items()}
    update_report(run_dir, fields)
    if dump_spec and is_main():
        for p in _write_dump(dump_spec, dumped):
            log.info(f"dump-nll: wrote {p}")
    log.close()
    return 0


def _run_ttt_phase(model, val, cfg: RunConfig, log, phases: dict, prequant: bool, *, dump: bool,
                   dumped: dict) -> dict:
    """Score-first TTT with the configured ensemble; the seed's log lines; report fields."""
    from pgolf.ttt.score_first import run_ttt

    t = cfg.ttt
    compliant = t.peer_mode != "seed"
    if not compliant:
        log.info("peer_ens: mode 'seed' reproduces #2139 as submitted and is NON-COMPLIANT "
                 "(C1: documents of a batch depend on each other; C4: tokens are scored twice)")
    log.info(f"ttt_phased: total_docs:{len(val.docs)} prefix_docs:{t.phased_prefix_docs} "
             f"num_phases:{t.phased_num_phases} target_tokens:{val.num_targets} peer_mode:{t.peer_mode} "
             f"peer_k:{t.peer_k} conf_thresh:{t.peer_conf_threshold} blend_w:{t.peer_blend_w}")
    log.info("\nbeginning TTT eval timer")
    res = run_ttt(model, val, cfg, dump=dump, log=log)
    secs = res.phase_seconds
    if "compile_warmup_s" in secs:
        log.info(f"ttt_lora:compile warmup done ({secs['compile_warmup_s']:.1f}s)")
    timer_s = secs.get("eval_s", 0.0) + secs.get("global_sgd_s", 0.0)
    phases.update({"ttt_compile_warmup_s": secs.get("compile_warmup_s", 0.0), "ttt_eval_s": secs.get("eval_s", 0.0),
                   "ttt_global_sgd_s": secs.get("global_sgd_s", 0.0)})
    peers_on = t.peer_mode != "off" and t.peer_k > 1
    log.info(f"peer_ens:coverage_tokens:{res.coverage_tokens if peers_on else 0}/{res.target_tokens} "
             f"batches:{res.num_batches}")
    if peers_on and res.coverage_tokens > 0:
        log.info(f"peer_ens:route_frac:{res.route_fraction:.6f} routed_tokens:{res.routed_tokens}/"
                 f"{res.coverage_tokens}")
        log.info(f"peer_ens:ensemble_covered_only val_loss:{res.ensemble.loss():.6f} "
                 f"val_bpb:{res.ensemble.bpb():.6f}")
    log.info(f"peer_ens:baseline val_loss:{res.own.loss():.6f} val_bpb:{res.own.bpb():.6f}")
    if peers_on and 0 < res.coverage_tokens < res.target_tokens:
        log.info(f"peer_ens: WARNING the ensemble covers {res.coverage_tokens}/{res.target_tokens} targets "
                 "(batches smaller than peer_k are own-only); its bpb is not a full-val score")
    final = res.ensemble if peers_on and res.coverage_tokens > 0 else res.own
    label = "prequant_ttt_phased" if prequant else "quantized_ttt_phased"
    log.info(_diag_line(label, final, timer_s))
    log.info(f"total_eval_time:{timer_s:.1f}s")
    if not compliant:
        log.info(f"NON-COMPLIANT: the {label} figure above uses the 'seed' peer ensemble")
    fields = {"val_bpb_ttt": res.own.bpb(), "val_loss_ttt": res.own.loss(),
              "val_bpb_ttt_ensemble": final.bpb(), "val_loss_ttt_ensemble": final.loss(),
              "peer_mode": t.peer_mode, "peer_k": t.peer_k, "peer_compliant": compliant,
              "route_fraction": res.route_fraction if peers_on else 0.0,
              "coverage_tokens": res.coverage_tokens if peers_on else 0, "target_tokens": res.target_tokens,
              "ttt_eval_time_s": timer_s}
    if not compliant:
        fields["compliance_note"] = ("NON-COMPLIANT: peer_mode=seed (#2139 as submitted) violates C1 and C4; "
                                     "use peer_mode=causal")
    if prequant:  # never overwrite the artifact's scored numbers (or their labels) with an unquantized model's
        fields = {(k if k == "target_tokens" else f"{k}_prequant"): v for k, v in fields.items()}
    if dump and res.nll_final is not None:
        dumped.update(nll=res.nll_final.astype("float32"), nll_own=res.nll_own.astype("float32"),
                      bytes=res.target_bytes, positions=res.positions, score_counts=res.score_counts)
    return fields
