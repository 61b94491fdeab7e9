"""The token-only n-gram tilt (#2135's scoring boost): count statistics, gate, hint and the renormalised tilt.

Statistics. Target i predicts stream token T[i+1]. Its context is the n - 1 tokens ending at T[i]
(n = `eval.ngram_order`, 16). A table maps each context to its per-token counts. At target i the table is queried first:
the hint h_i is the context's most frequent next token (on a tie, the token that reached that count
first) and its share is top_count / total in float32. Only then is (context, T[i+1]) counted. The gate
fires when share >= threshold; there is no minimum count, so a context seen once before fires with
share 1.

Two orders of the same statistics (`eval.ngram_tilt`; `causal_hints` here, both in `pgolf.ngram_orders`):
- `stream` (#2135): targets in stream order, and contexts run across document boundaries. The context
  ring starts seeded with the first target, so target 14's context is [T1, T1, T2 .. T14] (BOS
  replaced) and targets 0..13 get no hint. This is causal in stream order only. pgolf scores documents
  longest first, so a long document's hints use counts from shorter documents that have not been
  scored yet, and global SGD then trains on those long documents before the short ones are scored.
  No single order makes both causal. The audit flags this mode.
- `causal`: the table is updated in the order pgolf scores targets (`ttt_order`: queue batch, chunk,
  row, position; stream order for the packed eval), and each target is counted right after its own
  score. Contexts never cross a BOS: the ring is reset at every BOS, so a document's first n - 2
  targets get no hint. Every count a hint uses comes from a target that was scored before
  it. Under the static TTT schedule each virtual rank keeps its own table (`groups`): a rank counts
  only what it has scored itself, as a GPU does while the others score concurrently, so the hints
  do not depend on timing or on the process count.

Hash-collision choice: a context is keyed by a 64-bit polynomial hash of its tokens (mixed), compared
in full. Two distinct contexts collide with probability about D^2 / 2^65 over D distinct contexts
(below 1e-4 for the 47.85 M-target validation set); `ngram_orders.hints(..., verify=True)` compares the token
windows behind every repeated key and raises on a collision (the tests run it). #2135's XOR hash of
small constants collides routinely, so its gate count (628,130) is not reproduced bit for bit.
(context, token) pairs are exact: the token is a sort key next to the context's group.

The fast path is vectorised numpy (two sorts, no Python loop over targets). Sorting the contexts by
(key, time) puts each context's updates in time order. Running counts and maxima over those sorted
runs give every query's state before its own update.

The tilt (`tilt_nll`) changes only the number written to the meter. With q = p(h) from the same
full-vocabulary softmax and beta the boost, p'(a) = p(a) e^{beta [a=h]} / (1 + q (e^beta - 1)) sums
to 1 exactly, and the scored loss is NLL' = NLL - beta [y=h] + ln(1 + q (e^beta - 1)). TTT and global
SGD train on the untilted NLL.
"""

from __future__ import annotations

import importlib
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from pgolf.ttt.windows import chunk_size_for

BOS_ID = 1
_MIX = np.uint64(0xFF51AFD7ED558CCD)
_BASE = 0x9E3779B97F4A7C15


@dataclass
class Hints:
    """Per target (index i predicts T[i+1]): the table's state at query time."""
    top_tok: np.ndarray    # int32, -1 where the context was never seen (or is not full)
    top_count: np.ndarray  # int32
    total: np.ndarray      # int32
    gate: np.ndarray       # bool

    @property
    def hint(self) -> np.ndarray:
        """The hinted token where the gate fires, else -1."""
        return np.where(self.gate, self.top_tok, -1)


def _context_keys(src: np.ndarray, ctx: int, base: int) -> np.ndarray:
    """64-bit key of src[i-ctx+1 .. i] for every i (garbage for i < ctx-1): a polynomial hash by doubling."""
    out = src.astype(np.uint64)
    out += np.uint64(1)
    tmp = np.empty_like(out)  # one scratch buffer: the passes are memory-bound, fresh arrays cost page faults
    acc, acc_len, span = None, 0, 1  # out[i] = hash of the `span` tokens ending at i
    while ctx:
        if ctx & 1:
            if acc is None:
                acc = out.copy()
            else:  # prepend `span` tokens to the suffix held in acc
                np.multiply(out[:-acc_len], np.uint64(pow(base, acc_len, 1 << 64)), out=tmp[acc_len:])
                acc[acc_len:] += tmp[acc_len:]
            acc_len += span
        ctx >>= 1
        if ctx:
            np.multiply(out[:-span], np.uint64(pow(base, span, 1 << 64)), out=tmp[span:])
            out[span:] += tmp[span:]
            span *= 2
    # The newest token has coefficient 1, so keys differing only there differ in low bits; an odd
    # multiplier (a bijection) spreads every difference into the high bits the sort in `_query_then_count` keys on.
    acc *= _MIX
    return acc


def _starts(a: np.ndarray) -> np.ndarray:
    """True where a run of equal values begins."""
    s = np.ones(a.size, bool)
    s[1:] = a[1:] != a[:-1]
    return s


def _in_repeats(start: np.ndarray) -> np.ndarray:
    """True for the elements of runs (beginning where `start`) of at least two."""
    keep = ~start
    keep[:-1] |= ~start[1:]
    return keep


def _query_then_count(keys: np.ndarray, nxt: np.ndarray):
    """The table's state before each update, for updates in array order, at the updates that see a count.

    Returns (indices, top_tok, top_count, total, first): `first` is the index of the first update with
    the same key (for the collision check). Every other index saw an empty context."""
    m = keys.size
    tb = max(1, (m - 1).bit_length())
    mask = np.uint64((1 << tb) - 1)
    # One sort on (high key bits, time) groups contexts with their times ascending.
    srt = keys & ~mask
    srt |= np.arange(m, dtype=np.uint64)
    srt.sort()
    hk = srt >> np.uint64(tb)
    keep = _in_repeats(_starts(hk))  # a context seen once has no query with a count
    t = (srt[keep] & mask).astype(np.int64)
    hk, k = hk[keep], keys[t]
    bad = (hk[1:] == hk[:-1]) & (k[1:] != k[:-1])
    if bad.any():  # truncated keys collided: order those runs by (full key, time)
        run = np.cumsum(_starts(hk))
        bad = np.isin(run, run[1:][bad])
        sub = t[bad]
        t[bad] = sub[np.lexsort((sub, keys[sub]))]
    start = _starts(keys[t])
    keep = _in_repeats(start)
    t, start = t[keep], start[keep]
    n = t.size
    if n == 0:
        return (t,) * 5
    gid = np.cumsum(start) - 1
    x = nxt[t].astype(np.int64)
    idx = np.arange(n)
    first = np.maximum.accumulate(np.where(start, idx, 0))
    # Count of (context, token) after each update: its rank among equal pairs, in time order.
    pair = (gid << 16) | x
    ib = max(1, (n - 1).bit_length())
    if int(pair[-1]).bit_length() + ib <= 63:
        order2 = np.sort((pair << ib) | idx) & ((1 << ib) - 1)
    else:
        order2 = np.argsort(pair, kind="stable")
    count = np.empty(n, np.int64)
    count[order2] = idx - np.maximum.accumulate(np.where(_starts(pair[order2]), idx, 0)) + 1
    # Running maximum per context (offset by the group so it never leaks across groups), exclusive of self.
    off = gid * (n + 1)
    prev = np.maximum.accumulate(off + count) - off
    prev = np.concatenate(([0], prev[:-1]))
    prev[start] = 0
    lead = np.maximum.accumulate(np.where(count > prev, idx, 0))  # the update that set the current top
    q = np.flatnonzero(~start)
    return t[q], x[lead[q - 1]], prev[q], q - first[q], t[first[q]]


def _tokens(tokens) -> np.ndarray:
    return np.asarray(tokens.cpu() if isinstance(tokens, torch.Tensor) else tokens)


def _causal_stats(tok: np.ndarray, ctx: int, update_order=None, groups=None):
    """The `causal` order's statistics of the stream `tok` (at least ctx + 1 tokens): (context source, the
    targets whose query saw a count, for each the first target with its key, top_tok, top_count, total)."""
    n = tok.size - 1
    src = tok[:n]
    ar = np.arange(n)
    last_bos = np.maximum.accumulate(np.where(src == BOS_ID, ar, -1))
    full = (last_bos >= 0) & (last_bos <= ar - ctx + 1)
    seq = ar if update_order is None else np.asarray(update_order, np.int64)
    if seq.size != n:
        raise ValueError(f"update_order lists {seq.size} targets of {n}")
    seq = seq[full[seq]]
    keys = _context_keys(src, ctx, _BASE)[seq]
    if groups is not None:  # the rank joins the key, so ranks never share a count
        # Not `+ g * _MIX`: keys are h * _MIX, so that aliases (h, g + 1) with (h + 1, g), i.e. contexts
        # whose newest tokens differ by one. An xor then another odd multiply has no such structure.
        keys ^= np.asarray(groups, np.uint64)[seq] * np.uint64(_BASE)
        keys *= _MIX
    ti, tt, tc, tot, fi = _query_then_count(keys, tok[seq + 1])
    return src, seq[ti], seq[fi], tt, tc, tot


def _as_hints(n: int, stats, threshold: float) -> Hints:
    """`Hints` for n targets from a statistics pass (None: no target has a full context)."""
    out = Hints(np.full(n, -1, np.int32), np.zeros(n, np.int32), np.zeros(n, np.int32), np.zeros(n, bool))
    if stats is not None:
        _, pos, _, tt, tc, tot = stats
        out.top_tok[pos], out.top_count[pos], out.total[pos] = tt, tc, tot
        out.gate[pos] = tc.astype(np.float32) / tot.astype(np.float32) >= np.float32(threshold)
    return out


def causal_hints(tokens, *, ngram: int = 16, threshold: float = 0.8, update_order: np.ndarray | None = None,
                 groups: np.ndarray | None = None) -> Hints:
    """Hints for every target of the stream `tokens` (T[0] = BOS) in the `causal` order (module docstring).

    `update_order`: a permutation of the target indices, the order they are scored (`ttt_order`); default
    stream order. `groups`: per target, the (virtual) rank that scores it; each rank keeps its own table, as
    a rank sees only what it has scored itself. `ngram_orders.hints` has both orders and the collision check.
    """
    tok = _tokens(tokens)
    n, ctx = tok.size - 1, ngram - 1
    return _as_hints(n, _causal_stats(tok, ctx, update_order, groups) if n >= ctx else None, threshold)


def _offsets(lens: np.ndarray) -> np.ndarray:
    """0 .. len-1 for each span in turn: position within its span of every element of the concatenated spans."""
    return np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)


def ttt_order(queue, ttt_cfg, num_targets: int) -> np.ndarray:
    """Target indices in the order score-first TTT commits them: queue batch, chunk, row, position.

    Chunk ci of a batch scores every active row's targets [ci*C, (ci+1)*C) in one forward, rows in
    order; so the slot (batch, ci, row, t mod C) orders targets without a sort."""
    starts, lens, slots0, rowstride, chunk = [], [], [], [], []
    base = 0
    for b in queue:
        c = chunk_size_for(b.max_len, ttt_cfg)
        nb = len(b.docs)
        for r, d in enumerate(b.docs):
            starts.append(d.start)
            lens.append(d.pred_len)
            slots0.append(base + r * c)
            rowstride.append(nb * c)
            chunk.append(c)
        base += -(-(b.max_len - 1) // c) * nb * c
    lens_a = np.asarray(lens, np.int64)
    rep = lambda v: np.repeat(np.asarray(v, np.int64), lens_a)
    t = _offsets(lens_a)
    c = rep(chunk)
    slot = rep(slots0) + (t // c) * rep(rowstride) + t % c
    out = np.full(base, -1, np.int64)
    out[slot] = rep(starts) + t
    out = out[out >= 0]
    assert out.size == num_targets, f"TTT queue covers {out.size} of {num_targets} targets"
    return out


def tilt_nll(nll: torch.Tensor, logq: torch.Tensor, hit: torch.Tensor, gate: torch.Tensor,
             beta: float) -> torch.Tensor:
    """NLL' = NLL - beta [y=h] + ln(1 + q (e^beta - 1)) where gated, else NLL (float32)."""
    q = logq.float().clamp(max=0.0).exp()
    tilted = nll.float() - beta * hit.float() + torch.log1p(q * math.expm1(beta))
    return torch.where(gate, tilted, nll.float())


class NgramTilt:
    """Hints for one evaluation and the tilt applied to scored NLLs, with sums for the log."""

    def __init__(self, h: Hints, beta: float, order: str):
        self.hint = torch.from_numpy(h.hint.astype(np.int64))
        self.beta, self.order = float(beta), order
        self.gated = int(h.gate.sum())
        self.build_s = 0.0
        self._sums: torch.Tensor | None = None  # [hits, scored, untilted nats, tilted nats] on the scores' device

    @classmethod
    def build(cls, eval_cfg, tokens, update_order=None, groups=None) -> "NgramTilt | None":
        """None when `eval.ngram_tilt` is off. `update_order`: the scoring order, `groups`: the rank of each
        target (causal; default: stream order, one table)."""
        if eval_cfg.ngram_tilt == "off":
            return None
        t0 = time.perf_counter()
        kw = dict(ngram=eval_cfg.ngram_order, threshold=eval_cfg.ngram_threshold)
        if eval_cfg.ngram_tilt == "causal":
            h = causal_hints(tokens, update_order=update_order, groups=groups, **kw)
        else:  # #2135's stream order, imported by name: a packed causal record does not carry it
            h = importlib.import_module("pgolf.ngram_orders").hints(tokens, eval_cfg.ngram_tilt, **kw)
        tilt = cls(h, eval_cfg.ngram_beta, eval_cfg.ngram_tilt)
        tilt.build_s = time.perf_counter() - t0
        return tilt

    @classmethod
    def for_ttt(cls, cfg, tokens, queue, batch_ranks=None) -> "NgramTilt | None":
        """The tilt of score-first TTT over `queue`; causal statistics follow its scoring order, one table per
        rank when `batch_ranks` (the virtual rank of each queue batch: the static schedule) is given."""
        if cfg.eval.ngram_tilt != "causal":
            return cls.build(cfg.eval, tokens)
        n = int(tokens.numel()) - 1
        groups = None
        if batch_ranks is not None:
            docs = [(d.start, d.pred_len, r) for b, r in zip(queue, batch_ranks) for d in b.docs]
            groups = np.zeros(n, np.int64)
            starts, lens, ranks = (np.asarray(c, np.int64) for c in zip(*docs))
            groups[np.repeat(starts, lens) + _offsets(lens)] = np.repeat(ranks, lens)
        return cls.build(cfg.eval, tokens, ttt_order(queue, cfg.ttt, n), groups)

    def hints_at(self, target_idx: torch.Tensor) -> torch.Tensor:
        """Hint ids for target indices (any shape), -1 where none."""
        return self.hint[target_idx.cpu().clamp(0, self.hint.numel() - 1)]

    def apply(self, nll: torch.Tensor, logq: torch.Tensor, hint: torch.Tensor, y: torch.Tensor,
              valid: torch.Tensor | None = None) -> torch.Tensor:
        """The scored (tilted) NLL; `hint` -1 = no gate; `y` the target ids. Sums the valid targets' figures."""
        hint, y = hint.to(nll.device), y.to(nll.device)
        gate = hint >= 0
        hit = gate & (hint == y)
        out = tilt_nll(nll, logq, hit, gate, self.beta)
        v = torch.ones_like(gate) if valid is None else valid.to(nll.device)
        # torch.where, not boolean indexing: no device sync per chunk.
        sums = torch.stack([(hit & v).sum().double(), v.sum().double(), torch.where(v, nll.double(), 0).sum(),
                            torch.where(v, out.double(), 0).sum()])
        self._sums = sums if self._sums is None else self._sums + sums
        return out

    def figures(self, reduce=None) -> dict:
        """Counts over every rank (`reduce`: an all-reduce sum) for the report."""
        sums = self._sums if self._sums is not None else torch.zeros(4, dtype=torch.float64)
        hits, scored, untilted, tilted = (reduce(sums) if reduce is not None else sums).tolist()
        return {"ngram_tilt": self.order, "ngram_gated": self.gated, "ngram_hits": int(hits),
                "ngram_scored": int(scored), "ngram_nats_untilted": untilted, "ngram_nats_tilted": tilted,
                "ngram_build_s": self.build_s}
