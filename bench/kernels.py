"""Forward+backward time of the two fused ops against their eager references, one JSON line per run.

    .venv/bin/python bench/kernels.py                       # small shapes; CPU: eager reference only
    .venv/bin/python bench/kernels.py --rows 98304 --dim 512 --hidden 2048 --vocab 8192   # record shapes (GPU)

Each line: op, path ("eager" or "triton"), dtype, shape, median milliseconds of one
forward+backward over --iters timed runs (after --warmup). The Triton path is timed only
on CUDA: under the CPU interpreter it runs every program in Python, so its time says
nothing about the kernel. On CUDA the MLP runs under bf16 autocast (as in training) and
the CE reads bf16 head outputs, like the model's loss under autocast.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from pgolf import kernels


def _time_ms(fn, warmup: int, iters: int, cuda: bool) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench(args: argparse.Namespace) -> list[dict]:
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    paths = ["eager", "triton"] if cuda and kernels.triton_installed() else ["eager"]
    dtype = torch.bfloat16 if cuda else torch.float32
    x = torch.randn(args.rows, args.dim, device=device, requires_grad=True)
    w_up = (torch.randn(args.hidden, args.dim, device=device) / args.dim ** 0.5).requires_grad_()
    w_down = (torch.randn(args.dim, args.hidden, device=device) / args.hidden ** 0.5).requires_grad_()
    logits = (10 * torch.randn(args.rows, args.vocab, device=device)).to(dtype).requires_grad_()
    targets = torch.randint(0, args.vocab, (args.rows,), device=device)
    lines = []
    for path in paths:
        use_triton = path == "triton"

        def mlp_step():
            with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
                out = kernels.mlp_leaky_relu_sq(x, w_up, w_down, use_triton=use_triton)
            out.float().square().mean().backward()

        def ce_step():
            kernels.softcapped_cross_entropy(logits, targets, 30.0, use_triton=use_triton).backward()

        for op, step, shape in (("mlp_leaky_relu_sq", mlp_step, [args.rows, args.dim, args.hidden]),
                                ("softcapped_cross_entropy", ce_step, [args.rows, args.vocab])):
            ms = _time_ms(step, args.warmup, args.iters, cuda)
            lines.append({"op": op, "path": path, "device": device, "dtype": str(dtype).removeprefix("torch."),
                          "shape": shape, "ms_fwd_bwd": round(ms, 3)})
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2048, help="tokens (rows of x and of the logits)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    for line in bench(ap.parse_args()):
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
