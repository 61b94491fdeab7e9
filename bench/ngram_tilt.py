"""Throughput of the n-gram tilt's statistics pass (`pgolf.ngram_orders.hints`) on a synthetic stream.

The stream mimics the validation set's repetition: documents of random tokens, one in ten opening
with a copy of a span of an earlier document, so about 2% of targets pass the gate (#2135's stream:
1.3%). Prints one JSON line per order (and `causal_ranks`: the causal order with one table per virtual
rank, as the static TTT schedule keeps them; batches go to 8 ranks in turn): tokens, seconds, tokens/s, gated
targets.

    PYTHONPATH=$PWD .venv/bin/python bench/ngram_tilt.py [--tokens 10000000]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from pgolf.config import TTTConfig
from pgolf.data import find_docs
from pgolf.ngram_orders import hints
from pgolf.ngram_tilt import BOS_ID, ttt_order
from pgolf.ttt.windows import build_queue


def synthetic_stream(num_tokens: int, vocab: int = 8192, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lens = rng.integers(50, 2000, num_tokens // 50 + 2)
    ends = np.cumsum(lens + 1)
    ndocs = int(np.searchsorted(ends, num_tokens)) + 1
    out = rng.integers(2, vocab, int(ends[ndocs - 1])).astype(np.uint16)
    starts = ends[:ndocs] - lens[:ndocs] - 1
    for d in range(1, ndocs):  # one document in ten opens with a copy of an earlier span
        if rng.random() < 0.1:
            s = int(rng.integers(1, starts[d]))
            n = min(int(lens[d]) // 4, int(starts[d]) - s)
            out[starts[d] + 1:starts[d] + 1 + n] = out[s:s + n]
    out[starts] = BOS_ID
    return out[:num_tokens + 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=10_000_000)
    args = ap.parse_args()
    tokens = synthetic_stream(args.tokens)
    # The causal order is score-first TTT's, as #2135's TTT runs it: batches of 64 documents, chunks of 48.
    ttt = TTTConfig(batch_size=64, chunk_size=48, short_chunk_steps=())
    queue = build_queue(find_docs(torch.from_numpy(tokens.astype(np.int64))), 64)
    scoring = ttt_order(queue, ttt, tokens.size - 1)
    groups = np.zeros(tokens.size - 1, np.int64)
    for qi, batch in enumerate(queue):
        for d in batch.docs:
            groups[d.start:d.start + d.pred_len] = qi % 8
    for order in ("stream", "causal", "causal_ranks"):
        upd = None if order == "stream" else scoring
        t0 = time.perf_counter()
        h = hints(tokens, order.split("_")[0], update_order=upd, groups=groups if order == "causal_ranks" else None)
        s = time.perf_counter() - t0
        print(json.dumps({"bench": "ngram_tilt_stats", "order": order, "tokens": int(tokens.size - 1),
                          "seconds": round(s, 3), "tokens_per_s": round((tokens.size - 1) / s),
                          "gated": int(h.gate.sum())}), flush=True)


if __name__ == "__main__":
    main()
