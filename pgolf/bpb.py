"""Bits per byte: the one place where bytes are counted and the score is summed.

    bpb = sum_t nll_t [nats] / (ln 2 * sum_t bytes_t)

The denominator is the number of bytes of the ORIGINAL text that the scored
target tokens stand for. Two sources, never mixed within one directory:

- the per-token byte sidecar `fineweb_val_bytes_*.bin` (CaseOps data; written
  by `pgolf.encoding.DocumentEncoder.encode_doc`): operators count 0 bytes, BOS 0,
  and a document's counts sum to its UTF-8 length. Counting the operators'
  own 3 UTF-8 bytes inflated the denominator by 8.9% in PR #2138; the sidecar
  exists so that never happens.
- the challenge's lookup tables for plain SentencePiece, which count the
  normalized piece text: `bytes(tgt) = base_bytes[tgt] + (has_space[tgt] &
  ~is_boundary[prev])`, i.e. a leading `▁` costs one byte except right after
  a control token such as BOS.

`BpbMeter` keeps float64 sums of nats, bytes and tokens on the device of the
losses (no host sync per batch) and all-reduces them once at the end.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pgolf.distributed import all_reduce_sum, get_dist

LN2 = math.log(2.0)
_SPACE = "\u2581"


def build_byte_luts(sp) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base_bytes int32 [V], has_space bool [V], is_boundary bool [V]) for a SentencePiece processor."""
    vocab = int(sp.vocab_size())
    base_bytes = np.zeros(vocab, dtype=np.int32)
    has_space = np.zeros(vocab, dtype=bool)
    is_boundary = np.zeros(vocab, dtype=bool)
    for i in range(vocab):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            is_boundary[i] = True
            continue
        if sp.is_byte(i):
            base_bytes[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith(_SPACE):
            has_space[i] = True
            piece = piece[1:]
        base_bytes[i] = len(piece.encode("utf-8"))
    return base_bytes, has_space, is_boundary


def lut_token_bytes(tokens: np.ndarray, luts) -> np.ndarray:
    """Bytes of each token as a target under the LUT rule; position 0 has no predecessor (treated as a boundary)."""
    base_bytes, has_space, is_boundary = luts
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.size and int(tokens.max()) >= base_bytes.size:
        raise ValueError(f"token id {int(tokens.max())} is outside the tokenizer's vocabulary ({base_bytes.size})")
    out = base_bytes[tokens].astype(np.int32)
    if tokens.size > 1:
        out[1:] += (has_space[tokens[1:]] & ~is_boundary[tokens[:-1]]).astype(np.int32)
    return out


class BpbMeter:
    """float64 sums of per-target NLL (nats), original bytes and target count."""

    def __init__(self):
        self._sums: torch.Tensor | None = None  # [nats, bytes, tokens], float64, on the losses' device

    def add(self, nll_nats: torch.Tensor, target_bytes: torch.Tensor) -> None:
        """Accumulate per-target losses and the bytes those targets stand for (same shape)."""
        assert nll_nats.shape == target_bytes.shape, f"{tuple(nll_nats.shape)} vs {tuple(target_bytes.shape)}"
        if self._sums is None:
            self._sums = torch.zeros(3, dtype=torch.float64, device=nll_nats.device)
        self._sums[0] += nll_nats.detach().to(torch.float64).sum()
        self._sums[1] += target_bytes.detach().to(device=self._sums.device, dtype=torch.float64).sum()
        self._sums[2] += nll_nats.numel()

    def _values(self) -> list[float]:
        return [0.0, 0.0, 0.0] if self._sums is None else self._sums.tolist()

    @property
    def sum_nats(self) -> float:
        return self._values()[0]

    @property
    def sum_bytes(self) -> float:
        return self._values()[1]

    @property
    def num_tokens(self) -> float:
        return self._values()[2]

    def all_reduce(self) -> "BpbMeter":
        """Sum the three totals over ranks (a no-op on one process); returns self."""
        dev = get_dist().device
        sums = self._sums if self._sums is not None else torch.zeros(3, dtype=torch.float64)
        reduced = all_reduce_sum(sums.to(dev).clone())
        self._sums = reduced.to(sums.device)
        return self

    def merge(self, other: "BpbMeter") -> "BpbMeter":
        """Add another meter's totals into this one (e.g. per-phase meters into a total)."""
        if other._sums is not None:
            if self._sums is None:
                self._sums = torch.zeros(3, dtype=torch.float64, device=other._sums.device)
            self._sums += other._sums.to(self._sums.device)
        return self

    def loss(self) -> float:
        """Mean NLL per target, in nats."""
        nats, _, num = self._values()
        return nats / num if num else float("nan")

    def bpb(self) -> float:
        nats, num_bytes, _ = self._values()
        return nats / (LN2 * num_bytes) if num_bytes else float("nan")

    def state(self) -> dict[str, float]:
        nats, num_bytes, num = self._values()
        return {"sum_nats": nats, "sum_bytes": num_bytes, "num_tokens": num, "loss": self.loss(), "bpb": self.bpb()}

    @classmethod
    def from_state(cls, state: dict) -> "BpbMeter":
        meter = cls()
        meter._sums = torch.tensor([state["sum_nats"], state["sum_bytes"], state["num_tokens"]], dtype=torch.float64)
        return meter
