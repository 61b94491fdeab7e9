"""Training throughput (tokens/s) of pgolf's real step on this machine, one JSON line per preset.

    .venv/bin/python bench/train_throughput.py                 # cpu and baseline presets
    .venv/bin/python bench/train_throughput.py --presets cpu --steps 5 --warmup-steps 2

Each preset runs the training loop's own step (`forward_backward` + `apply_update`: packed rows,
grad accumulation, local clipping, Muon + AdamW) on synthetic shards (uniform random tokens with a
BOS every ~400 tokens) in a temporary directory, at the segment cap and depth-recurrence state the
schedule has at mid-training (progress 0.5). The first --warmup-steps steps are not timed.

The per-step batch is the preset's, except where one step would take minutes on a CPU (the
baseline's 524,288 tokens): then `--max-step-tokens` caps it (default 2,048 on CPU) by running
fewer micro-steps, and cuts a row longer than the cap to whole segment caps. tokens/s is then
the per-token cost of that model at that row length; the JSON line says which batch ran.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pgolf.config import load_preset
from pgolf.loader import BOS_ID, DocumentPackingLoader
from pgolf.model import GPT
from pgolf.optim import build_optimizers
from pgolf.schedule import SeqLenSchedule, looping_active
from pgolf.shards import write_shard
from pgolf.train import apply_update, forward_backward


def synthetic_shard(path: Path, vocab_size: int, num_tokens: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, vocab_size, size=num_tokens)
    tokens[rng.random(num_tokens) < 1 / 400] = BOS_ID
    tokens[0] = BOS_ID
    write_shard(path, tokens)


def bench_preset(name: str, steps: int, warmup_steps: int, max_step_tokens: int, device: torch.device,
                 tmp: Path) -> dict:
    cfg = load_preset(name)
    tc = cfg.train
    seq_len = SeqLenSchedule.from_config(tc).lookup(0.5)
    looped = cfg.model.num_loops > 0 and looping_active(0.5, tc.enable_looping_at)
    grad_accum = tc.grad_accum_steps or 8  # world size 1
    local_tokens = tc.train_batch_tokens // grad_accum
    if tc.train_batch_tokens > max_step_tokens:
        # Fewer micro-steps of the run's own row length; a row longer than the cap is cut to
        # a whole number of segment caps.
        grad_accum = max(1, max_step_tokens // local_tokens)
        if local_tokens > max_step_tokens:
            local_tokens = max(seq_len, max_step_tokens // seq_len * seq_len)
    step_tokens = grad_accum * local_tokens
    shard = tmp / f"fineweb_train_{name}.bin"
    synthetic_shard(shard, cfg.model.vocab_size, (steps + warmup_steps + 4) * (local_tokens + 1) * grad_accum)

    torch.manual_seed(tc.seed)
    model = GPT(cfg.model).to(device)
    model.set_looping(looped)
    opt = build_optimizers(model, tc)
    params = [p for p in model.parameters() if p.requires_grad]
    loader = DocumentPackingLoader([shard], 0, 1, local_tokens, device)
    loss = None
    for i in range(warmup_steps + steps):
        if i == warmup_steps:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        loss = forward_backward(model, loader, seq_len, grad_accum, device)
        apply_update(opt, params, tc.grad_clip_norm)
    final_loss = float(loss)  # also waits for the device
    seconds = time.perf_counter() - t0
    return {"preset": name, "tokens_per_s": round(steps * step_tokens / seconds, 1), "step_tokens": step_tokens,
            "preset_step_tokens": tc.train_batch_tokens, "grad_accum": grad_accum, "seq_len": seq_len,
            "looping": looped, "steps": steps, "seconds": round(seconds, 3), "last_loss": round(final_loss, 4),
            "model_params": sum(p.numel() for p in model.parameters()), "device": str(device),
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["cpu", "baseline"])
    ap.add_argument("--steps", type=int, default=3, help="timed steps per preset")
    ap.add_argument("--warmup-steps", type=int, default=2,
                    help="untimed steps first: the first calls of a process pay one-off kernel and allocator setup")
    ap.add_argument("--max-step-tokens", type=int, default=None,
                    help="cap on tokens per step (default: 2048 on CPU, none on CUDA)")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cap = args.max_step_tokens or (2048 if device.type == "cpu" else 1 << 62)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.presets:
            print(json.dumps(bench_preset(name, args.steps, args.warmup_steps, cap, device, Path(tmp))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
