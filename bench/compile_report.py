"""What torch.compile builds for pgolf's training and eval forwards under the record's CUDA policy, on CPU.

    .venv/bin/python bench/compile_report.py                                    # tiny preset, dynamo only
    .venv/bin/python bench/compile_report.py --preset cpu --backend inductor --eval --step-time

The emulated CUDA policy (`pgolf.emulation`) is active: bf16 embedding, CPU bf16 autocast, fullgraph
compile through FlashAttention 3's stand-in op, the record's recompile limits. One JSON line per shape
family:

- `train`: the graphs `train._compile_warmup` builds (`train.warmup_variants`: stage length x looping
  x cu_seqlens bucket, then the warmup's real steps at the first stage, plain and looped); a family is
  one (stage length, looping) pair, its graphs are its buckets.
- `eval` (--eval): the packed eval forward (no grad, per-token NLL) over the rows `eval_packed` cuts
  from a synthetic validation set; a family is one row length.

Fields: `graphs` (graphs the family built), `recompiles` (those beyond the first graph of the model's
forward: what counts against dynamo's recompile_limit), `graph_breaks`, `compile_s` (first calls minus
the steady cost of the same calls). A last `frame` line sums them against the limit.

--step-time adds one line per policy with the steady seconds of one training step (grad_accum packed
micro-steps, clip, Muon + AdamW) at the schedule's mid-training stage: the CPU fp32 policy, the emulated
bf16 policy eager, and (with --step-time-compiled) emulated compiled with --backend.

--backend eager runs dynamo only (graph capture, guards, breaks: seconds per graph on a tiny model);
aot_eager adds AOT autograd's forward/backward trace; inductor generates C++ kernels (minutes per graph
on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from pgolf import device
from pgolf.config import load_preset
from pgolf.emulation import emulated_cuda_policy
from pgolf.evaluate import packed_batches
from pgolf.loader import BOS_ID, DocumentPackingLoader, build_cu_seqlens
from pgolf.model import GPT
from pgolf.optim import build_optimizers
from pgolf.schedule import SeqLenSchedule, looping_active
from pgolf.shards import write_shard
from pgolf.synthetic import synthetic_val
from pgolf.train import apply_update, forward_backward, grad_accum_steps, warmup_variants


class Recorder:
    """A torch.compile backend that counts the graphs dynamo hands it and compiles them with `backend`."""

    def __init__(self, backend: str):
        self.backend, self.graphs = backend, 0

    def __call__(self, gm, example_inputs):
        from torch._dynamo.backends.registry import lookup_backend

        self.graphs += 1
        return gm.forward if self.backend == "eager" else lookup_backend(self.backend)(gm, example_inputs)


def _breaks() -> int:
    return sum(torch._dynamo.utils.counters["graph_break"].values())


class Families:
    """Per-family graphs, recompiles, breaks and compile seconds of one compiled forward."""

    def __init__(self, recorder: Recorder):
        self.rec, self.rows, self.frame_graphs = recorder, defaultdict(lambda: defaultdict(float)), 0

    def call(self, key, run) -> None:
        """Run `run()` twice: the first call compiles (if its guards miss), the second is the steady cost."""
        g0, b0, t0 = self.rec.graphs, _breaks(), time.perf_counter()
        run()
        t1 = time.perf_counter()
        run()
        t2 = time.perf_counter()
        new = self.rec.graphs - g0
        row = self.rows[key]
        row["graphs"] += new
        row["recompiles"] += new - (1 if self.frame_graphs == 0 and new else 0)
        row["graph_breaks"] += _breaks() - b0
        row["compile_s"] += max(0.0, (t1 - t0) - (t2 - t1))
        self.frame_graphs += new

    def lines(self, phase: str, fields) -> list[dict]:
        return [{"phase": phase, **fields(key), **{k: (round(v, 2) if k == "compile_s" else int(v))
                                                   for k, v in row.items()}}
                for key, row in self.rows.items()]


def train_report(cfg, policy, fwd, model, fam: Families) -> list[dict]:
    tc = cfg.train
    row_tokens = tc.train_batch_tokens // grad_accum_steps(tc, 1)
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randint(2, cfg.model.vocab_size, (1, row_tokens), generator=g) for _ in range(2))
    variants = [(n, lp, cu) for n, lp, cu in warmup_variants(cfg, row_tokens)]
    first = tc.seq_len_stages[0][0]
    step_cu = build_cu_seqlens(x[0], first)[0]
    for looped in (False, True) if cfg.model.num_loops > 0 else (False,):
        variants.append((first, looped, step_cu))  # the warmup's real steps (a no-op where already built)

    for seq_len, looped, cu in variants:
        def run():
            model.set_looping(looped)
            with policy.autocast():
                loss = fwd(x, y, cu_seqlens=cu, max_seqlen=seq_len)
            loss.backward()
            model.zero_grad(set_to_none=True)
        fam.call((seq_len, looped), run)
    model.set_looping(False)
    return fam.lines("train", lambda k: {"seq_len": k[0], "looping": k[1]})


def eval_report(cfg, policy, fwd, model, fam: Families) -> list[dict]:
    ec = cfg.eval
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(8, 2 * ec.eval_seq_len, (max(8, 4 * ec.val_batch_tokens // ec.eval_seq_len),),
                            generator=g).tolist()
    val = synthetic_val(lengths, cfg.model.vocab_size)
    model.set_looping(True)
    model.eval()
    with torch.no_grad():
        for start, end in packed_batches(val.num_targets, ec, 0, 1):
            x, y = val.tokens[start:end], val.tokens[start + 1:end + 1]
            cu, max_seqlen = build_cu_seqlens(x, ec.eval_seq_len)

            def run():
                with policy.autocast():
                    fwd(x[None], y[None], cu_seqlens=cu, max_seqlen=max_seqlen, reduction="none")
            fam.call(x.numel(), run)
    model.train()
    return fam.lines("eval", lambda k: {"row_tokens": k})


# --------------------------------------------------------------------------- step time
def _shard(path: Path, vocab_size: int, num_tokens: int) -> None:
    rng = np.random.default_rng(0)
    tokens = rng.integers(2, vocab_size, size=num_tokens)
    tokens[rng.random(num_tokens) < 1 / 400] = BOS_ID
    tokens[0] = BOS_ID
    write_shard(path, tokens)


def step_time(cfg, policy, label: str, steps: int, warmup: int, tmp: Path, backend: str | None) -> dict:
    """Steady seconds per training step of `cfg` under `policy` (eager, or compiled with `backend`)."""
    cfg = cfg.replace({"train.compile": "on" if backend else "off"})  # Polar Express compiles with the model
    tc = cfg.train
    with policy.activate():
        torch.manual_seed(0)
        model = policy.cast_model(GPT(cfg.model))
        opt = build_optimizers(model, tc)
        clip = [p for p in model.parameters() if p.requires_grad]
        fwd = policy.compile(model, backend=Recorder(backend)) if backend else model
        grad_accum = grad_accum_steps(tc, 1)
        files = sorted(tmp.glob("*_train_*.bin"))
        loader = DocumentPackingLoader(files, 0, 1, tc.train_batch_tokens // grad_accum, policy.device)
        seq_len = SeqLenSchedule.from_config(tc).lookup(0.5)
        model.set_looping(cfg.model.num_loops > 0 and looping_active(0.5, tc.enable_looping_at))
        times = []
        for i in range(warmup + steps):
            t = time.perf_counter()
            forward_backward(fwd, loader, seq_len, grad_accum, policy.device)
            apply_update(opt, clip, tc.grad_clip_norm)
            times.append(time.perf_counter() - t)
    timed = times[warmup:]
    return {"phase": "step_time", "policy": label, "seq_len": seq_len, "looping": model.looping,
            "step_tokens": tc.train_batch_tokens, "steps": steps, "seconds_per_step": round(sum(timed) / len(timed), 4),
            "min_seconds": round(min(timed), 4),
            "tokens_per_s": round(tc.train_batch_tokens * len(timed) / sum(timed), 1),
            "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--backend", default="eager", choices=("eager", "aot_eager", "inductor"))
    ap.add_argument("--eval", action="store_true", help="also the packed eval forward")
    ap.add_argument("--no-train", action="store_true", help="skip the training warmup graphs")
    ap.add_argument("--step-time", action="store_true", help="steady step time: CPU fp32 vs emulated bf16")
    ap.add_argument("--step-time-compiled", action="store_true", help="also emulated and compiled with --backend")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup-steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_preset(args.preset)
    policy = emulated_cuda_policy()
    out = []
    if not args.no_train or args.eval:
        with policy.activate():
            torch.manual_seed(0)
            model = policy.cast_model(GPT(cfg.model))
            rec = Recorder(args.backend)
            fam = Families(rec)
            fwd = policy.compile(model, backend=rec)
            if not args.no_train:
                out += train_report(cfg, policy, fwd, model, fam)
            if args.eval:
                ev = Families(rec)
                ev.frame_graphs = fam.frame_graphs  # one code object: eval graphs count against the same limit
                out += eval_report(cfg, policy, fwd, model, ev)
                fam.frame_graphs = ev.frame_graphs
            out.append({"phase": "frame", "graphs": rec.graphs, "recompile_limit": torch._dynamo.config.recompile_limit,
                        "graph_breaks": _breaks(), "backend": args.backend, "preset": args.preset})
        torch._dynamo.reset()
    for line in out:
        print(json.dumps(line), flush=True)
    if args.step_time or args.step_time_compiled:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            tokens = max(200_000, 4 * cfg.train.train_batch_tokens * (args.steps + args.warmup_steps))
            _shard(tmp / "fineweb_train_000000.bin", cfg.model.vocab_size, tokens)
            runs = [(device.cpu_policy(), "cpu_fp32_eager", None), (policy, "emulated_bf16_eager", None)]
            if args.step_time_compiled:
                runs.append((policy, f"emulated_bf16_{args.backend}", args.backend))
            for pol, label, backend in runs:
                print(json.dumps(step_time(cfg, pol, label, args.steps, args.warmup_steps, tmp, backend)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
