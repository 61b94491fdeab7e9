"""A slow, obvious token n-gram tilt statistics pass (pure Python), used only by tests.

It walks the targets one at a time in update order, keeping a ring of the last `ngram - 1` tokens,
with exact tuple keys: query the table, record the state, then count the pair. In stream order the
ring runs over the whole stream and starts seeded with the first target. In causal order it is reset
at every BOS. `events` (if a list) receives ("query", i) and ("update", i) in the order they happen.
"""

from __future__ import annotations

import numpy as np

BOS_ID = 1


def reference_hints(tokens, order="stream", ngram=16, threshold=0.8, update_order=None, events=None,
                    insert_first=False, groups=None):
    """(top_tok, top_count, total, gate) per target. `insert_first` counts the target before the query:
    the illegal variant (the hint then reads the target it scores), kept as a negative control.
    `groups` (causal): per target, the rank whose own table counts it."""
    tok = [int(t) for t in tokens]
    n = len(tok) - 1
    ctx = ngram - 1
    top_tok, top_count, total, gate = [-1] * n, [0] * n, [0] * n, [False] * n
    table: dict[tuple, dict] = {}
    last_bos, seen = [], None
    for j, t in enumerate(tok):
        seen = j if t == BOS_ID else seen
        last_bos.append(seen)

    def context(i):
        """The ctx tokens ending at T[i], or None if the ring is not full."""
        if order == "stream":
            if i < ctx - 1:
                return None
            if i >= ctx:
                return tuple(tok[i - ctx + 1:i + 1])
            return tuple([tok[1]] + tok[1:i + 1])  # seeded with the first target; the first BOS never enters
        start = last_bos[i]
        if start is None or i - start + 1 < ctx:
            return None
        window = tuple(tok[i - ctx + 1:i + 1])
        return window if groups is None else (int(groups[i]), window)

    seq = range(n) if update_order is None or order == "stream" else [int(i) for i in update_order]
    for i in seq:
        c = context(i)
        if events is not None:
            events.append(("query", i))
        if c is None:
            continue
        if insert_first:
            cheat = table.setdefault(c, {"counts": {}, "top": -1, "top_count": 0, "total": 0})
            cheat["counts"][tok[i + 1]] = cheat["counts"].get(tok[i + 1], 0) + 1
            cheat["total"] += 1
            if cheat["counts"][tok[i + 1]] > cheat["top_count"]:
                cheat["top"], cheat["top_count"] = tok[i + 1], cheat["counts"][tok[i + 1]]
            if events is not None:
                events.insert(len(events) - 1, ("update", i))  # before its own query
        entry = table.get(c)
        if entry is not None:
            top_tok[i], top_count[i], total[i] = entry["top"], entry["top_count"], entry["total"]
            gate[i] = bool(np.float32(entry["top_count"]) / np.float32(entry["total"]) >= np.float32(threshold))
        else:
            entry = table[c] = {"counts": {}, "top": -1, "top_count": 0, "total": 0}
        if insert_first:
            continue
        y = tok[i + 1]
        entry["counts"][y] = entry["counts"].get(y, 0) + 1
        entry["total"] += 1
        if entry["counts"][y] > entry["top_count"]:
            entry["top"], entry["top_count"] = y, entry["counts"][y]
        if events is not None:
            events.append(("update", i))
    return top_tok, top_count, total, gate
