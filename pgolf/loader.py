"""Training data: the record's document-packing loader and the calibration sampler.

The loader turns the train shards into one packed row per micro-step, exactly as
the record reads them:

    shards (sorted, never shuffled) -> one shared cursor -> global span per step
    global span = world_size x (local_tokens + 1) tokens; rank r takes slice r
    slice -> x = slice[:-1], y = slice[1:], cu_seqlens from the BOS positions in x

Every BOS starts a new segment, so attention never crosses a document; a segment
longer than the stage's cap is cut into cap-sized pieces that attend
independently. `cu_seqlens` is padded to a multiple of 64 entries (by repeating
the last value) so a compiled graph sees few distinct shapes. Each shard is read
from its first BOS; when the next global span does not fit in what is left of a
shard, that tail is dropped and reading moves to the next shard, wrapping to
shard 0 after the last.

Prefetch. The record keeps two batches in flight on a background thread, so the
cursor is always two global spans ahead of the batch being trained on. When the
cap changes (a new sequence-length stage) it discards those two prefetched
batches, whose spans are then never trained on. We keep that cursor arithmetic
exactly but prefetch synchronously: a queued batch is only a reserved span
`(shard, start)`, materialised when it is popped. The reservation is plain data,
so `.state()` / `.load_state()` resume a run bit-for-bit. (Materialising one of
the record's 98,304-token rows takes about 0.35 ms on a CPU core, against ~90 ms
per GPU step, so a background thread would buy nothing measurable.)

The calibration sampler draws random fixed-length windows (crossing document
boundaries, as the record's Hessian collection does) from a rank-strided subset
of the train shards with a numpy PCG64 generator seeded by the rank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgolf.errors import DataError
from pgolf.shards import read_header, read_shard
from pgolf.tokenizer import BOS_ID

CU_BUCKET = 64
NUM_PREFETCH = 2


def build_cu_seqlens(tokens, max_doc_len: int, bucket: int = CU_BUCKET,
                     starts: list[int] | None = None) -> tuple[torch.Tensor, int]:
    """Segment boundaries of one packed row: a start at 0, at every BOS and at every index in
    `starts` (sliding-window eval packs several windows in a row), long segments split.

    Returns (cu_seqlens int32 [k], max_seqlen) where k is the boundary count rounded up to
    a multiple of `bucket` by repeating the row length, and max_seqlen the longest segment.
    `max_doc_len` <= 0 means no splitting.
    """
    toks = tokens.numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
    total_len = int(toks.shape[-1])
    assert toks.ndim == 1 and total_len > 0, f"expected a non-empty 1-D row, got shape {toks.shape}"
    # A row that opens mid-document makes that partial document a segment of its own (the 0).
    extra = [s for s in (starts or []) if 0 <= s < total_len]
    doc_starts = np.union1d(np.flatnonzero(toks == BOS_ID), np.asarray([0] + extra, dtype=np.int64))
    doc_ends = np.append(doc_starts[1:], total_len)
    if max_doc_len > 0:
        seg_starts = np.concatenate([np.arange(s, e, max_doc_len) for s, e in zip(doc_starts, doc_ends)])
    else:
        seg_starts = doc_starts
    boundaries = np.append(seg_starts, total_len)
    max_seqlen = int(np.diff(boundaries).max())
    padded_len = -(-boundaries.size // bucket) * bucket
    cu = np.full(padded_len, total_len, dtype=np.int32)
    cu[: boundaries.size] = boundaries
    return torch.from_numpy(cu), max_seqlen


class _Shard:
    """One memory-mapped shard and the position of its first BOS (where reading starts)."""

    def __init__(self, path: Path):
        self.path = path
        self.tokens = read_shard(path)
        self.first_bos = -1
        # Scan in chunks: the first BOS is near the start, and a 100M-token shard is 200 MB.
        for lo in range(0, len(self.tokens), 1 << 16):
            hits = np.flatnonzero(self.tokens[lo: lo + (1 << 16)] == BOS_ID)
            if hits.size:
                self.first_bos = lo + int(hits[0])
                break
        if self.first_bos < 0:
            raise DataError(f"{path}: train shard has no BOS token (id {BOS_ID}); cannot find a document start")

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


class DocumentPackingLoader:
    """Sequential packed batches for one rank; see the module docstring for the layout."""

    def __init__(self, files, rank: int, world_size: int, local_tokens: int, device: torch.device | str = "cpu"):
        self.files = [Path(f) for f in files]
        if not self.files:
            raise DataError("no train shards (fineweb_train_*.bin) to read")
        assert 0 <= rank < world_size and local_tokens > 0
        self.rank = rank
        self.world_size = world_size
        self.local_tokens = local_tokens
        self.device = torch.device(device)
        self.max_seq_len = 0  # the cap the queued spans were reserved under; 0 = none yet
        self._cache: dict[int, _Shard] = {}
        self._queue: list[tuple[int, int]] = []  # reserved (shard index, global span start)
        self.shard_index = 0
        self.cursor = self._shard(0).first_bos
        self.num_wraps = 0

    @property
    def global_span_tokens(self) -> int:
        return self.world_size * (self.local_tokens + 1)

    def _shard(self, index: int) -> _Shard:
        if index not in self._cache:
            # Keep only the shard being reserved from and those a queued span still points at.
            keep = {self.shard_index, *(q[0] for q in self._queue)}
            for old in [i for i in self._cache if i not in keep]:
                del self._cache[old]
            self._cache[index] = _Shard(self.files[index])
        return self._cache[index]

    def _reserve_span(self) -> tuple[int, int]:
        """Advance the shared cursor by one global span (dropping shard tails) and return its start."""
        span = self.global_span_tokens
        num_skipped = 0
        while self.cursor + span > len(self._shard(self.shard_index)):
            num_skipped += 1
            if num_skipped > len(self.files):
                raise DataError(f"train shards are too small: none holds one global span of {span} tokens "
                                f"after its first BOS (world_size {self.world_size} x ({self.local_tokens} + 1)); "
                                f"prepare larger shards or lower train.train_batch_tokens")
            self.shard_index += 1
            if self.shard_index == len(self.files):
                self.shard_index = 0
                self.num_wraps += 1
            self.cursor = self._shard(self.shard_index).first_bos
        start = (self.shard_index, self.cursor)
        self.cursor += span
        return start

    def _materialise(self, shard_index: int, span_start: int):
        shard = self._shard(shard_index)
        local_start = span_start + self.rank * (self.local_tokens + 1)
        window = torch.from_numpy(shard.tokens[local_start: local_start + self.local_tokens + 1].astype(np.int64))
        x, y = window[:-1], window[1:]
        cu_seqlens, _ = build_cu_seqlens(x, self.max_seq_len)
        return x, y, cu_seqlens

    def next_batch(self, max_seq_len: int):
        """(x [1,T], y [1,T], cu_seqlens int32, max_seqlen) with T = local_tokens.

        max_seqlen is the stage cap itself, not the longest segment of this row: a static
        value keeps compiled graphs stable and is all FlashAttention needs (an upper bound).
        """
        assert max_seq_len > 0, max_seq_len
        if max_seq_len != self.max_seq_len:
            # The record drops its in-flight batches here; their spans are skipped for good.
            self.max_seq_len = int(max_seq_len)
            self._queue.clear()
        while len(self._queue) < NUM_PREFETCH:
            self._queue.append(self._reserve_span())
        shard_index, span_start = self._queue.pop(0)
        x, y, cu_seqlens = self._materialise(shard_index, span_start)
        self._queue.append(self._reserve_span())
        # non_blocking overlaps a host-to-GPU copy with queued work; to the CPU `.to` returns the tensor itself.
        dev = self.device
        return (x[None].to(dev, non_blocking=True), y[None].to(dev, non_blocking=True),
                cu_seqlens.to(dev, non_blocking=True), self.max_seq_len)

    # -- resume ---------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The cursor and the reserved spans: everything needed to continue identically."""
        return {"shard_index": self.shard_index, "cursor": self.cursor, "max_seq_len": self.max_seq_len,
                "queue": [list(q) for q in self._queue], "num_wraps": self.num_wraps,
                "global_span_tokens": self.global_span_tokens, "num_files": len(self.files)}

    def load_state(self, state: dict[str, Any]) -> None:
        if int(state["global_span_tokens"]) != self.global_span_tokens or int(state["num_files"]) != len(self.files):
            raise DataError(f"loader state is for {state['num_files']} shards and spans of "
                            f"{state['global_span_tokens']} tokens, not {len(self.files)} and "
                            f"{self.global_span_tokens}; resume with the same data and world size")
        self.shard_index = int(state["shard_index"])
        self.cursor = int(state["cursor"])
        self.max_seq_len = int(state["max_seq_len"])
        self.num_wraps = int(state["num_wraps"])
        self._queue = [(int(a), int(b)) for a, b in state["queue"]]


class CalibrationSampler:
    """Random windows of `seq_len` tokens for Hessian collection (the record's shuffled loader).

    Rank r reads shards r, r + world_size, ... (all of them if there are fewer shards than
    ranks). Each shard is cut into non-overlapping windows at a random phase and consumed
    in a random order; the shard for each window is drawn in proportion to the windows it
    has left, and all shards are re-cut once every window has been used.
    """

    def __init__(self, files, rank: int, world_size: int, seq_len: int):
        files = [Path(f) for f in files]
        self.files = files[rank::world_size] or files
        self.seq_len = seq_len
        self.rng = np.random.Generator(np.random.PCG64(rank))
        self.num_tokens = [read_header(f) for f in self.files]
        if max(self.num_tokens, default=0) < seq_len + 1:
            raise DataError(f"calibration windows of {seq_len} tokens do not fit in any train shard "
                            f"(largest has {max(self.num_tokens, default=0)} tokens)")
        self._starts: list[list[int]] = [[] for _ in self.files]
        self._tokens = [read_shard(f) for f in self.files]  # memmaps: no RAM until touched
        self._refill()

    def _refill(self) -> None:
        for i, n in enumerate(self.num_tokens):
            max_phase = min(self.seq_len - 1, max(0, n - self.seq_len - 1))
            phase = int(self.rng.integers(max_phase + 1)) if max_phase > 0 else 0
            num_windows = max(0, (n - 1 - phase) // self.seq_len)
            self._starts[i] = (phase + self.rng.permutation(num_windows) * self.seq_len).tolist()

    def next_batch(self, num_windows: int) -> torch.Tensor:
        """LongTensor [num_windows, seq_len] of token ids (inputs only)."""
        out = torch.empty((num_windows, self.seq_len), dtype=torch.int64)
        remaining = np.array([len(s) for s in self._starts], dtype=np.float64)
        for row in range(num_windows):
            if remaining.sum() <= 0:
                self._refill()
                remaining = np.array([len(s) for s in self._starts], dtype=np.float64)
            i = int(self.rng.choice(len(self.files), p=remaining / remaining.sum()))
            start = self._starts[i].pop()
            remaining[i] -= 1
            out[row] = torch.from_numpy(self._tokens[i][start: start + self.seq_len].astype(np.int64))
        return out
