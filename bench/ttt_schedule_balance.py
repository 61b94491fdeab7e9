"""How evenly the static TTT schedule spreads work over N virtual ranks. Prints JSON lines.

For each document set, the length-sorted batches are dealt to N virtual ranks
per segment (the queue between global-SGD pauses, which every rank waits for)
by three rules, and each rank's load is reported against the mean:

- `round_robin`: queue batch i of the segment to rank i mod N;
- `snake`: round-robin that reverses direction every N batches;
- `greedy_tokens`: each batch, in queue order, to the rank with the fewest
  scored tokens so far;
- `greedy_window` (pgolf's, `pgolf.ttt.rank_schedule`): the same with the
  fewest window tokens so far.

Loads: `tokens` (scored targets) and `forward_tokens` (window tokens: rows x
window width summed over the chunk forwards, what the forwards process, a
proxy for time; `rank_schedule.window_tokens`). Document sets:

- `record_val`: the real validation set (50,000 documents, 47,853,343 targets),
  rebuilt from #2139's log (`bench/data/seed42_rank0_batch_lengths.txt`: the
  shortest and longest document of each of the 263 batches rank 0 scored, one
  batch in ~8 of the 2,084), interpolated in log length (`record_doc_lengths`)
  with the tail's curvature fitted so the set has the logged target count; the
  record's batch size (24), window (3072), chunk steps and pause (2,500
  documents on 8 ranks) apply.
- `cpu_preset`: the `cpu` preset's own data (the embedded corpus, vocabulary
  1024, 100 validation documents, as `pgolf run` prepares it) and TTT settings;
  with `--time` it also runs static TTT of a freshly initialised cpu-preset
  model on one process and reports each virtual rank's seconds.

    PYTHONPATH=. .venv/bin/python bench/ttt_schedule_balance.py [--ranks 8] [--time] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from pgolf.config import load_preset
from pgolf.ttt.global_sgd import pause_points, phase_boundaries
from pgolf.ttt.rank_schedule import assign_batches, window_tokens
from pgolf.ttt.windows import build_queue, chunk_size_for, num_chunks

HERE = Path(__file__).resolve().parent
RECORD_DOCS, RECORD_TARGETS, RECORD_BATCHES = 50_000, 47_853_343, 2084


def record_doc_lengths(curve: float) -> list[int]:
    """Document lengths (tokens, both BOS included) of the record's validation set, rebuilt from its log.

    Between two logged batches, log(length) runs from one to the other along t**curve (t: the fraction
    of the gap); inside a batch, log-linearly from its shortest to its longest document. Logged batches
    are ~8 apart except at the long tail (b1972, b2017, b2084), where `curve` decides how fast lengths grow.
    """
    rows = sorted(tuple(map(int, line.split())) for line in (HERE / "data" / "seed42_rank0_batch_lengths.txt")
                  .read_text().split("\n") if line.strip())
    lengths: list[int] = []
    for b in range(1, RECORD_BATCHES + 1):
        lo = max((r for r in rows if r[0] <= b), default=rows[0])
        hi = min((r for r in rows if r[0] >= b), default=rows[-1])
        f = 0.0 if hi[0] == lo[0] else ((b - lo[0]) / (hi[0] - lo[0])) ** curve
        first, last = (math.log(lo[k]) + f * (math.log(hi[k]) - math.log(lo[k])) for k in (1, 2))
        n = RECORD_DOCS - 24 * (RECORD_BATCHES - 1) if b == RECORD_BATCHES else 24
        lengths += [round(math.exp(first + (last - first) * i / max(n - 1, 1))) for i in range(n)]
    return lengths


def calibrated_record_lengths() -> tuple[float, list[int]]:
    """The curve (bisection) at which the rebuilt set has the logged 47,853,343 targets, and its lengths."""
    lo, hi = 1.0, 64.0  # more targets at lo, fewer at hi
    for _ in range(40):
        mid = (lo + hi) / 2
        if sum(n - 1 for n in record_doc_lengths(mid)) > RECORD_TARGETS:
            lo = mid
        else:
            hi = mid
    return hi, record_doc_lengths(hi)


def batch_loads(batch, ttt) -> tuple[int, int]:
    """(scored targets, forward tokens = sum over chunks of active rows x window width) of one batch."""
    chunk = chunk_size_for(batch.max_len, ttt)
    ncs = [num_chunks(d.pred_len, chunk) for d in batch.docs]
    widest = batch.max_len - 1  # the padded forward of chunk ci is as wide as its widest window
    forward = sum(sum(ci < n for n in ncs) * min((ci + 1) * chunk, widest, ttt.eval_seq_len) for ci in range(max(ncs)))
    assert forward == window_tokens(batch, ttt)  # the closed form the schedule uses
    return sum(d.pred_len for d in batch.docs), forward


def deal(rule: str, loads: list[tuple[int, int]], n: int) -> list[list[int]]:
    if rule.startswith("greedy"):
        return assign_batches([lo[rule == "greedy_window"] for lo in loads], n)
    out: list[list[int]] = [[] for _ in range(n)]
    for i in range(len(loads)):
        r = i % n
        out[r if rule == "round_robin" or (i // n) % 2 == 0 else n - 1 - r].append(i)
    return out


def balance(name: str, doc_lengths: list[int], ttt, n: int) -> list[dict]:
    starts = [0]
    for length in doc_lengths[:-1]:
        starts.append(starts[-1] + length - 1)  # consecutive documents share a BOS
    queue = build_queue(list(zip(starts, doc_lengths)), ttt.batch_size)
    bounds = phase_boundaries(ttt.phased_prefix_docs, ttt.phased_num_phases, sum(len(b.docs) for b in queue))
    ends = [nb for nb, _ in pause_points([len(b.docs) for b in queue], bounds, n)] + [len(queue)]
    loads = [batch_loads(b, ttt) for b in queue]
    out = []
    for rule in ("round_robin", "snake", "greedy_tokens", "greedy_window"):
        per_rank = {"tokens": [0] * n, "forward_tokens": [0] * n}
        segments = []
        lo = 0
        for hi in ends:
            seg = {"tokens": [0] * n, "forward_tokens": [0] * n}
            for r, rows in enumerate(deal(rule, loads[lo:hi], n)):
                for i in rows:
                    for k, v in zip(("tokens", "forward_tokens"), loads[lo + i]):
                        seg[k][r] += v
                        per_rank[k][r] += v
            segments.append({"batches": hi - lo, **{f"{k}_max_over_mean": max(v) * n / sum(v) for k, v in seg.items()}})
            lo = hi
        out.append({"docs": name, "rule": rule, "virtual_ranks": n, "num_docs": len(doc_lengths),
                    "targets": sum(per_rank["tokens"]), "batches": len(queue), "pause_after_batches": ends[:-1],
                    "tokens_per_rank": per_rank["tokens"],
                    "tokens_max_over_mean": max(per_rank["tokens"]) * n / sum(per_rank["tokens"]),
                    "forward_tokens_max_over_mean": max(per_rank["forward_tokens"]) * n
                    / sum(per_rank["forward_tokens"]), "segments": segments})
    return out


def cpu_val(data: str | None):
    from pgolf.data import load_val
    from pgolf.prepare import prepare_data

    if data is None:
        data = str(Path(tempfile.mkdtemp(prefix="pgolf_balance_")) / "embedded1024")
        prepare_data(source="embedded", out_dir=data, vocab_size=1024, val_docs=100, caseops=True,
                     shard_tokens=200_000, overwrite=False, progress=False)
    return load_val(data)


def cpu_seconds(val, cfg, n: int) -> dict:
    """Static TTT of a fresh cpu-preset model on one process: seconds and targets per virtual rank."""
    from pgolf.model import GPT
    from pgolf.ttt.score_first import run_ttt

    class Events:
        def __init__(self):
            self.rows = []

        def event(self, name, **fields):
            self.rows.append((name, fields, time.perf_counter()))

    torch.manual_seed(0)
    model = GPT(cfg.model).eval()
    cfg = cfg.replace({"ttt.schedule": "static", "ttt.virtual_ranks": n})
    log = Events()
    t0 = time.perf_counter()
    run_ttt(model, val, cfg, log=log)
    seconds, targets = [0.0] * n, [0] * n
    prev = t0
    for name, fields, t in log.rows:
        if name == "ttt_batch":
            seconds[fields["rank"]] += t - prev
        prev = t  # a global-SGD event closes its own interval
    sizes = {b.batch_idx: sum(d.pred_len for d in b.docs) for b in build_queue(val.docs, cfg.ttt.batch_size)}
    for name, fields, _ in log.rows:
        if name == "ttt_batch":
            targets[fields["rank"]] += sizes[fields["batch"]]
    return {"docs": "cpu_preset", "measure": "cpu_seconds", "virtual_ranks": n, "threads": torch.get_num_threads(),
            "seconds_per_rank": [round(s, 3) for s in seconds], "targets_per_rank": targets,
            "seconds_max_over_mean": max(seconds) * n / sum(seconds)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ranks", type=int, default=8)
    p.add_argument("--time", action="store_true", help="also time static TTT per virtual rank on the cpu preset")
    p.add_argument("--data", default=None, help="a prepared cpu-preset data dir (default: prepare one in /tmp)")
    args = p.parse_args(argv)
    curve, lengths = calibrated_record_lengths()
    print(json.dumps({"docs": "record_val", "curve": round(curve, 3), "rebuilt_docs": len(lengths),
                      "rebuilt_targets": sum(n - 1 for n in lengths), "logged_targets": RECORD_TARGETS}))
    for row in balance("record_val", lengths, load_preset("seed").ttt, args.ranks):
        print(json.dumps(row))
    cfg = load_preset("cpu")
    val = cpu_val(args.data)
    for row in balance("cpu_preset", [n for _, n in val.docs], cfg.ttt, args.ranks):
        print(json.dumps(row))
    if args.time:
        torch.set_num_threads(1)
        print(json.dumps(cpu_seconds(val, cfg, args.ranks)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
