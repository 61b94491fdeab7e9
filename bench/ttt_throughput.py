"""Scored tokens per second of the four evaluation modes, side by side, on this machine.

    .venv/bin/python bench/ttt_throughput.py [--preset tiny] [--val-docs N] [--data DIR]

Modes, all over the same validation documents and the same model:
  no_ttt        the diagnostic packed eval (`eval_packed`)
  ttt           score-first LoRA TTT, own adapters only (peer_mode off)
  ttt_causal    TTT + the causal peer ensemble (legal)
  ttt_pr2139    TTT + the #2139 peer ensemble (non-compliant; for comparison)

One JSON line per mode: scored targets, seconds inside the eval timer (compile
warmup excluded, as the seed times it), tokens/s, slowdown against no_ttt, and
the bpb each mode reports. The model is a random-init GPT of the preset: the
throughput is what matters here, not the bpb (train one with `pgolf train` and
pass --run to measure a real model). Without --data the embedded corpus is
prepared into a temporary directory first (not timed). Budget: < 3 minutes on 2
CPU cores with the defaults.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from pgolf.config import load_json, load_preset
from pgolf.data import load_val
from pgolf.distributed import init_distributed
from pgolf.evaluate import eval_packed, load_eval_model
from pgolf.model import GPT
from pgolf.ttt.score_first import run_ttt


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _prepare(vocab_size: int, val_docs: int, out: Path) -> Path:
    from pgolf.prepare import prepare_data

    prepare_data(source="embedded", out_dir=out, vocab_size=vocab_size, val_docs=val_docs, caseops=True,
                 shard_tokens=1_000_000, overwrite=True, progress=False)
    return out


def _model(cfg, run: str | None, device: torch.device):
    if run:
        model, _ = load_eval_model(run, cfg=cfg)
        return model
    torch.manual_seed(0)
    model = GPT(cfg.model).to(device)
    model.set_looping(True)
    return model.eval()


MODES = ("no_ttt", "ttt", "ttt_causal", "ttt_pr2139")


def _measure(mode: str, model, val, cfg) -> tuple[float, dict]:
    """(seconds inside the eval timer, result fields) of one mode."""
    if mode == "no_ttt":
        t0 = time.perf_counter()
        meter = eval_packed(model, val, cfg.eval)
        return time.perf_counter() - t0, {"bpb": meter.bpb(), "scored_tokens": int(meter.num_tokens)}
    peer_mode = {"ttt": "off", "ttt_causal": "causal", "ttt_pr2139": "pr2139"}[mode]
    res = run_ttt(model, val, cfg.replace({"ttt.peer_mode": peer_mode}))
    secs = res.phase_seconds
    timer_s = secs.get("eval_s", 0.0) + secs.get("global_sgd_s", 0.0)
    return timer_s, {"bpb": res.ensemble.bpb(), "own_bpb": res.own.bpb(), "scored_tokens": res.target_tokens,
                     "coverage_tokens": res.coverage_tokens, "route_fraction": round(res.route_fraction, 6),
                     "compile_warmup_s": round(secs.get("compile_warmup_s", 0.0), 3),
                     "global_sgd_s": round(secs.get("global_sgd_s", 0.0), 3), "compliant": res.compliant}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", help="pgolf preset (default tiny; cpu is ~10x slower per token)")
    ap.add_argument("--val-docs", type=int, default=0,
                    help="validation documents to score (default: two TTT batches, so the causal ensemble's "
                         "second batch has finished peers; the first batch never has any)")
    ap.add_argument("--data", default=None, help="a prepared data directory (default: prepare the embedded corpus)")
    ap.add_argument("--run", default=None, help="a run directory whose artifact to load instead of a random init")
    ap.add_argument("--peer-k", type=int, default=None, help="ensemble size for the ensemble modes (default: preset)")
    ap.add_argument("--rounds", type=int, default=2, help="round-robin repetitions; the best time counts (default 2)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: with tiny ops, more threads on a shared machine "
                         "oversubscribe the cores and ran 10x slower here; 0 = torch's choice)")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    device = init_distributed().device
    cfg = load_json(Path(args.run) / "config.json") if args.run else load_preset(args.preset)
    overrides = {"train.compile": "off"}
    if args.peer_k is not None:
        overrides["ttt.peer_k"] = args.peer_k
    cfg = cfg.replace(overrides)
    args.val_docs = args.val_docs or 2 * cfg.ttt.batch_size
    cfg = cfg.replace({"eval.val_docs_limit": args.val_docs})
    with tempfile.TemporaryDirectory(prefix="pgolf-bench-") as tmp:
        t0 = time.perf_counter()
        data_dir = Path(args.data) if args.data else _prepare(cfg.model.vocab_size, max(args.val_docs, 8),
                                                            Path(tmp) / "data")
        val = load_val(data_dir, val_docs_limit=args.val_docs)
        model = _model(cfg, args.run, device)
        print(f"# setup {time.perf_counter() - t0:.1f}s: {len(val.docs)} docs, {val.num_targets} targets, "
              f"preset {cfg.preset}, {_device_name(device)}", file=sys.stderr, flush=True)

        # Untimed warm-up of every code path on two documents: first-call costs (allocator,
        # kernels, lazy init) would otherwise land on whichever mode runs first.
        warm = load_val(data_dir, val_docs_limit=2)
        eval_packed(model, warm, cfg.eval)
        for peer_mode in ("off", "causal", "pr2139"):
            run_ttt(model, warm, cfg.replace({"ttt.peer_mode": peer_mode, "ttt.phased_prefix_docs": 0}))

        # Round-robin rounds, best time per mode: on a shared machine the minimum is the
        # least disturbed measurement, and interleaving spreads any slow spell over all modes.
        best: dict[str, tuple[float, dict]] = {}
        for _ in range(args.rounds):
            for mode in MODES:
                timer_s, rec = _measure(mode, model, val, cfg)
                if mode not in best or timer_s < best[mode][0]:
                    best[mode] = (timer_s, rec)
        base_tps = best["no_ttt"][1]["scored_tokens"] / best["no_ttt"][0]
        for mode in MODES:
            timer_s, rec = best[mode]
            tps = rec["scored_tokens"] / timer_s
            print(json.dumps({"mode": mode, "preset": cfg.preset, "device": _device_name(device),
                              "seconds": round(timer_s, 3), "tokens_per_s": round(tps, 1),
                              "slowdown_vs_no_ttt": round(base_tps / tps, 2), "rounds": args.rounds, **rec}),
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
