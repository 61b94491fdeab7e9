"""The n-gram statistics in either order, checked: #2135's `stream` order next to pgolf's `causal` one.

`hints(tokens, order, ..., verify=)` is the one entry over both orders (see `pgolf.ngram_tilt` for what each
order counts and when). A run in `causal` order calls `ngram_tilt.causal_hints` and never loads this module, so
a packed causal record does not carry it; `NgramTilt.build` imports it by name for `eval.ngram_tilt=stream`
(which the audit flags), and the packer bundles it for that config only. The tests and `bench/ngram_tilt.py`
compare the orders here, with `verify=True`: the token windows behind every repeated 64-bit key are compared
and a collision raises.
"""

from __future__ import annotations

import numpy as np

from pgolf.ngram_tilt import _BASE, Hints, _as_hints, _causal_stats, _context_keys, _query_then_count, _tokens


def _stream_stats(tok: np.ndarray, ctx: int):
    """`_causal_stats`'s tuple for the `stream` order: targets in stream order, contexts across documents."""
    n = tok.size - 1
    src = tok[:n].copy()
    src[0] = tok[1]  # the ring starts seeded with the first target
    keys = _context_keys(src, ctx, _BASE)
    ti, tt, tc, tot, fi = _query_then_count(keys[ctx - 1:], tok[ctx:])  # slices: no gathers
    return src, ti + ctx - 1, fi + ctx - 1, tt, tc, tot


def hints(tokens, order: str = "stream", *, ngram: int = 16, threshold: float = 0.8,
          update_order: np.ndarray | None = None, groups: np.ndarray | None = None, verify: bool = False) -> Hints:
    """Hints for every target of the stream `tokens` (T[0] = BOS) in one order (see `pgolf.ngram_tilt`).

    `update_order` (causal only): a permutation of the target indices, the order they are scored
    (`ttt_order`); default stream order. `groups` (causal only): per target, the (virtual) rank that
    scores it; each rank keeps its own table, as a rank sees only what it has scored itself.
    `verify` compares the token windows behind every repeated key and raises on a collision.
    """
    if order not in ("stream", "causal"):
        raise ValueError(f"n-gram tilt order {order!r}: stream | causal")
    tok = _tokens(tokens)
    n, ctx = tok.size - 1, ngram - 1
    if n < ctx:
        return _as_hints(n, None, threshold)
    stats = _stream_stats(tok, ctx) if order == "stream" else _causal_stats(tok, ctx, update_order, groups)
    src, pos, ref = stats[:3]
    same = [np.array_equal(src[pos - j], src[ref - j]) for j in range(ctx)]
    if groups is not None and order == "causal":
        same.append(np.array_equal(np.asarray(groups)[pos], np.asarray(groups)[ref]))
    if verify and not all(same):
        raise RuntimeError("n-gram tilt: two contexts share a 64-bit key")
    return _as_hints(n, stats, threshold)
