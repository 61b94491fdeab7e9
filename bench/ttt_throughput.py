"""Scored tokens per second of the four evaluation modes, side by side, on this machine.

    .venv/bin/python bench/ttt_throughput.py [--preset tiny] [--val-docs N] [--data DIR]
    .venv/bin/python bench/ttt_throughput.py --preset cpu --long-docs 8000 --val-docs 8 --modes ttt

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
prepared into a temporary directory first (not timed); --long-docs L joins its
validation documents into documents of at least L tokens each, the case where
TTT's per-chunk overhead shows (a long document is hundreds of chunks). Budget: < 3 minutes on 2
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
from pgolf.data import ValData, find_docs, load_val
from pgolf.distributed import init_distributed
from pgolf.evaluate import eval_packed, load_scored_model
from pgolf.model import GPT
from pgolf.rundir import RunDir
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


def join_docs(val: ValData, doc_tokens: int, num_docs: int) -> ValData:
    """The first `num_docs` documents of at least `doc_tokens` tokens made of consecutive validation
    documents with the BOS between them dropped (a BOS target costs 0 bytes, so bytes stay exact).

    Joining tokenized documents, not texts: SentencePiece training on documents this long stalls."""
    tokens, nbytes = val.tokens.tolist(), val.token_bytes.tolist()
    bos = tokens[0]
    out_t, out_b, cur = [bos], [0], 0
    for start, length in val.docs:
        body = range(start + 1, start + length - 1)  # without this doc's BOS and the next one
        out_t += [tokens[i] for i in body]
        out_b += [nbytes[i] for i in body]
        cur += len(body)
        if cur >= doc_tokens:
            out_t.append(bos)
            out_b.append(0)
            cur = 0
            if out_t.count(bos) > num_docs:
                break
    if cur:  # a short remainder is dropped, so every document is long
        del out_t[len(out_t) - cur:], out_b[len(out_b) - cur:]
    t = torch.tensor(out_t, dtype=torch.int64)
    return ValData(tokens=t, token_bytes=torch.tensor(out_b, dtype=torch.int32), docs=find_docs(t),
                   byte_source=val.byte_source)


def _model(cfg, run: str | None, device: torch.device):
    if run:
        model, _ = load_scored_model(RunDir(run), cfg)
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
    ap.add_argument("--long-docs", type=int, default=0,
                    help="join the embedded corpus into documents of about this many tokens (default: as is)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}")
    ap.add_argument("--profile", type=int, default=0,
                    help="print the top N functions of a cProfile of one extra run of the first mode (stderr)")
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
        # Long documents are joined from ~40 short ones each: prepare enough of them as validation.
        need = args.val_docs * max(1, args.long_docs // 150)
        data_dir = Path(args.data) if args.data else _prepare(cfg.model.vocab_size, max(need, 8),
                                                            Path(tmp) / "data")
        if args.long_docs:
            val = join_docs(load_val(data_dir), args.long_docs, args.val_docs)
        else:
            val = load_val(data_dir, val_docs_limit=args.val_docs)
        model = _model(cfg, args.run, device)
        modes = [m for m in MODES if m in args.modes.split(",")]
        lengths = sorted(n for _, n in val.docs)
        print(f"# setup {time.perf_counter() - t0:.1f}s: {len(val.docs)} docs ({lengths[0]}..{lengths[-1]} tokens), "
              f"{val.num_targets} targets, "
              f"preset {cfg.preset}, {_device_name(device)}", file=sys.stderr, flush=True)

        # Untimed warm-up of every code path on two documents: first-call costs (allocator,
        # kernels, lazy init) would otherwise land on whichever mode runs first.
        warm = load_val(data_dir, val_docs_limit=2)
        eval_packed(model, warm, cfg.eval)
        for mode in modes[modes[0] == "no_ttt":]:
            peer_mode = {"ttt": "off", "ttt_causal": "causal", "ttt_pr2139": "pr2139"}[mode]
            run_ttt(model, warm, cfg.replace({"ttt.peer_mode": peer_mode, "ttt.phased_prefix_docs": 0}))

        # Round-robin rounds, best time per mode: on a shared machine the minimum is the
        # least disturbed measurement, and interleaving spreads any slow spell over all modes.
        best: dict[str, tuple[float, dict]] = {}
        for _ in range(args.rounds):
            for mode in modes:
                timer_s, rec = _measure(mode, model, val, cfg)
                if mode not in best or timer_s < best[mode][0]:
                    best[mode] = (timer_s, rec)
        base_tps = best["no_ttt"][1]["scored_tokens"] / best["no_ttt"][0] if "no_ttt" in best else None
        for mode in modes:
            timer_s, rec = best[mode]
            tps = rec["scored_tokens"] / timer_s
            slowdown = round(base_tps / tps, 2) if base_tps else None
            print(json.dumps({"mode": mode, "preset": cfg.preset, "device": _device_name(device),
                              "long_docs": args.long_docs, "seconds": round(timer_s, 3), "tokens_per_s": round(tps, 1),
                              "slowdown_vs_no_ttt": slowdown, "rounds": args.rounds, **rec}),
                  flush=True)
        if args.profile:
            import cProfile
            import io
            import pstats

            prof = cProfile.Profile()
            prof.runcall(_measure, modes[0], model, val, cfg)
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(args.profile)
            print(text.getvalue(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
