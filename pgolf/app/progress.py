"""A progress bar for long evaluations: documents, tokens, running bpb and an ETA on stderr.

The library's loops know nothing of it: they take a callback (`eval_packed`'s
`on_scored`, `run_ttt`'s `on_batch`) and this module turns the calls into a
tqdm bar. Only rank 0 draws, and only when stderr is a terminal, so logs and
pipes stay clean; the run log keeps its one JSON line per TTT batch either way.
"""

from __future__ import annotations

import math
import sys

import torch
from tqdm import tqdm

from pgolf.distributed import get_dist, is_main

LN2 = math.log(2.0)


class EvalProgress:
    """One bar over this rank's share of `val`'s targets; `packed` and `ttt` are the two loops' callbacks."""

    def __init__(self, val, label: str, *, enabled: bool | None = None):
        self.val, self.label = val, label
        self.docs_total = len(val.docs)
        if enabled is None:
            enabled = is_main() and sys.stderr.isatty()
        self.enabled = enabled
        self._bar = None  # drawn at the first update, so the loop's own header lines come before it
        self.docs, self.nats, self.bytes = 0, 0.0, 0.0
        self._bos = (val.tokens == val.tokens[0]).cumsum(0) if enabled else None

    @property
    def bar(self) -> tqdm:
        if self._bar is None:
            # Every rank scores about 1/world of the targets; rank 0's bar counts its own share.
            total = self.val.num_targets // max(1, get_dist().world_size)
            self._bar = tqdm(total=total, desc=self.label, unit="tok", unit_scale=True, disable=not self.enabled,
                             dynamic_ncols=True, leave=True, file=sys.stderr)
        return self._bar

    def _show(self, tokens: int, bpb: float) -> None:
        self.bar.set_postfix_str(f"docs {self.docs:,}/{self.docs_total:,} bpb {bpb:.4f}", refresh=False)
        self.bar.update(tokens)

    def packed(self, first: int, nll: torch.Tensor) -> None:
        """`eval_packed`'s on_scored: targets first+1 .. first+n were scored."""
        if not self.enabled:
            return
        n = nll.numel()
        self.nats += float(nll.detach().double().sum())
        self.bytes += float(self.val.token_bytes[first + 1:first + 1 + n].double().sum())
        self.docs = int(self._bos[first + n]) - 1  # documents whose BOS-to-BOS span has been reached
        self._show(n, self.nats / LN2 / max(self.bytes, 1.0))

    def ttt(self, docs: int, own: list) -> None:
        """`run_ttt`'s on_batch: a batch of `docs` documents is done; `own` holds the running own-adapter meter
        of each (virtual) rank this process runs."""
        if not self.enabled:
            return
        self.docs += docs
        tokens = sum(m.num_tokens for m in own)
        nats, nbytes = sum(m.sum_nats for m in own), sum(m.sum_bytes for m in own)
        self._show(int(tokens) - self.bar.n, nats / LN2 / max(nbytes, 1.0))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def chain(*hooks):
    """One on_scored callback calling each of `hooks` that is not None (None if none is)."""
    live = [h for h in hooks if h is not None]
    if not live:
        return None
    return lambda *a: [h(*a) for h in live] and None
