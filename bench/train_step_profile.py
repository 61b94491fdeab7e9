"""Where the time of one training step goes: one JSON line per part, then the top operators.

    .venv/bin/python bench/train_step_profile.py                      # cpu preset, looping off and on
    .venv/bin/python bench/train_step_profile.py --preset cpu --steps 6 --seq-len 256

The step is the training loop's own pieces, timed one after another with a wall clock
(synchronous on CPU): the loader's next batch, the forward, the backward, gradient clipping,
the AdamW steps, the Muon step (momentum, Polar Express, update) and the EMA update. "other"
is the step's wall time minus the parts (Python between them). Synthetic shards as in
`train_throughput.py`. The torch profiler's top operators by self CPU time follow, for one
step of the looped model, as `{"op": ...}` lines.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from pgolf.config import load_preset
from pgolf.loader import DocumentPackingLoader
from pgolf.model import GPT
from pgolf.optim import build_optimizers
from pgolf.schedule import SeqLenSchedule
from pgolf.train import EMA

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import synthetic_shard  # noqa: E402


class _Parts:
    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.t = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] += now - self.t
        self.t = now


def one_step(model, opt, ema, loader, seq_len, grad_accum, clip_norm, parts: _Parts) -> float:
    for _ in range(grad_accum):
        x, y, cu, mx = loader.next_batch(seq_len)
        parts.mark("loader")
        loss = model(x, y, cu_seqlens=cu, max_seqlen=mx)
        parts.mark("forward")
        (loss / grad_accum).backward()
        parts.mark("backward")
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], clip_norm)
    parts.mark("clip")
    opt.muon.launch_reduce_scatters()
    for adam in (opt.adam_embed, opt.adam_scalar):
        if adam is not None:
            adam.step()
    parts.mark("adamw")
    opt.muon.step()
    parts.mark("muon")
    opt.zero_grad(set_to_none=True)
    parts.mark("zero_grad")
    ema.update()
    parts.mark("ema")
    return float(loss.detach())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per looping state")
    ap.add_argument("--warmup-steps", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=0, help="segment cap (default: the schedule's at progress 0.5)")
    ap.add_argument("--top", type=int, default=15, help="operators to list from the profiler")
    args = ap.parse_args(argv)
    cfg = load_preset(args.preset)
    tc = cfg.train
    seq_len = args.seq_len or SeqLenSchedule.from_config(tc).lookup(0.5)
    grad_accum = tc.grad_accum_steps or 8
    local_tokens = tc.train_batch_tokens // grad_accum
    torch.manual_seed(tc.seed)
    model = GPT(cfg.model)
    opt = build_optimizers(model, tc)
    ema = EMA(model, tc.ema_decay)
    with tempfile.TemporaryDirectory() as tmp:
        shard = Path(tmp) / "fineweb_train_000000.bin"
        n_steps = 2 * (args.steps + args.warmup_steps) + 2
        synthetic_shard(shard, cfg.model.vocab_size, n_steps * grad_accum * (local_tokens + 1) + 1024)
        loader = DocumentPackingLoader([shard], 0, 1, local_tokens, torch.device("cpu"))
        for looping in (False, True):
            model.set_looping(looping)
            for _ in range(args.warmup_steps):
                one_step(model, opt, ema, loader, seq_len, grad_accum, tc.grad_clip_norm, _Parts())
            parts = _Parts()
            t0 = parts.t
            for _ in range(args.steps):
                one_step(model, opt, ema, loader, seq_len, grad_accum, tc.grad_clip_norm, parts)
            wall = time.perf_counter() - t0
            parts.seconds["other"] = wall - sum(parts.seconds.values())
            for name, s in parts.seconds.items():
                print(json.dumps({"preset": args.preset, "looping": looping, "seq_len": seq_len, "part": name,
                                  "ms_per_step": round(1000 * s / args.steps, 2),
                                  "share": round(s / wall, 4)}), flush=True)
            print(json.dumps({"preset": args.preset, "looping": looping, "seq_len": seq_len, "part": "step",
                              "ms_per_step": round(1000 * wall / args.steps, 2),
                              "tokens_per_s": round(args.steps * tc.train_batch_tokens / wall, 1),
                              "threads": torch.get_num_threads(), "torch": torch.__version__}), flush=True)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            one_step(model, opt, ema, loader, seq_len, grad_accum, tc.grad_clip_norm, _Parts())
        rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:args.top]
        total_us = sum(e.self_cpu_time_total for e in prof.key_averages())
        for e in rows:
            print(json.dumps({"op": e.key, "calls": e.count, "self_ms": round(e.self_cpu_time_total / 1000, 2),
                              "share": round(e.self_cpu_time_total / total_us, 4)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
