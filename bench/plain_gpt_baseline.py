"""The reference the `cpu` preset is measured against: a plain GPT-2-style model at the same wallclock budget.

    PYTHONPATH=. .venv/bin/python bench/plain_gpt_baseline.py --data out/run-data [--seconds 230]

Same data as `make run` (the prepared embedded corpus: its training shard, its validation stream and byte
sidecar, so the bpb is computed exactly as pgolf's), about the same size as the `cpu` preset (1.2 M parameters:
5 pre-norm blocks, d=128, 4 heads, GELU MLP x4, learned positions, tied embedding), AdamW (lr 3e-3, wd 0.1,
betas 0.9/0.95), linear warm-up then cosine decay over the wallclock budget, batches of 8 x 512 random windows of
the training stream, float32, torch's CPU threads. Validation: non-overlapping 512-token windows of the whole
validation stream (documents are not separated: a plain model's usual evaluation). One JSON line.

This is a bench, not a test: its number depends on the machine's speed, and the `cpu` preset's target is set
against it (`pgolf run`'s pre-quantization val_bpb vs this line, measured back to back).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pgolf.data import load_val, train_files
from pgolf.shards import read_concat


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class PlainGPT(nn.Module):
    def __init__(self, vocab: int, d: int = 128, layers: int = 5, heads: int = 4, ctx: int = 512):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for blk in self.blocks:
            x = blk(x)
        return self.ln(x) @ self.tok.weight.T


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a prepared data directory (make run's: out/run-data)")
    ap.add_argument("--seconds", type=float, default=230.0, help="training wallclock budget (default 230)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    train = torch.from_numpy(read_concat(train_files(args.data)).astype(np.int64))
    val = load_val(args.data)
    vocab = int(max(int(train.max()), int(val.tokens.max())) + 1)
    vocab = max(vocab, json.loads((Path(args.data) / "manifest.json").read_text()).get("vocab_size", vocab))
    model = PlainGPT(vocab, ctx=args.seq_len)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    warmup_s = 0.05 * args.seconds
    steps, tokens, t0 = 0, 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < args.seconds:
        frac = elapsed / args.seconds
        scale = frac / 0.05 if elapsed < warmup_s else 0.5 * (1 + math.cos(math.pi * (frac - 0.05) / 0.95))
        for g in opt.param_groups:
            g["lr"] = args.lr * max(scale, 0.01)
        starts = torch.randint(0, train.numel() - args.seq_len - 1, (args.batch,), generator=gen)
        win = torch.stack([train[s:s + args.seq_len + 1] for s in starts.tolist()])
        loss = F.cross_entropy(model(win[:, :-1]).flatten(0, 1), win[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps, tokens = steps + 1, tokens + win[:, 1:].numel()
    train_s = time.perf_counter() - t0

    model.eval()
    nats, n = 0.0, val.tokens.numel() - 1
    with torch.no_grad():
        for s in range(0, n, args.seq_len):
            x = val.tokens[s:min(s + args.seq_len, n)][None]
            y = val.tokens[s + 1:s + 1 + x.shape[1]]
            nats += float(F.cross_entropy(model(x)[0], y, reduction="sum").double())
    bpb = nats / math.log(2) / val.target_bytes_total
    print(json.dumps({"model": "plain_gpt", "params": params, "steps": steps, "train_s": round(train_s, 1),
                      "tokens_per_s": round(tokens / train_s), "epochs": round(tokens / train.numel(), 2),
                      "val_bpb": round(bpb, 5), "threads": torch.get_num_threads(), "torch": torch.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
