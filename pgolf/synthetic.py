"""Synthetic validation streams: random documents with known lengths, for tests and benchmarks.

Nothing a real run scores comes from here; the TTT compile warmup draws its own tokens.
"""

from __future__ import annotations

from typing import Sequence

import torch

from pgolf.data import ValData, find_docs


def synthetic_val(doc_lengths: Sequence[int], vocab_size: int, seed: int = 0, period: int = 0):
    """A `ValData` of random documents (for tests and benchmarks): doc i has doc_lengths[i] targets.

    Tokens are drawn from [2, vocab_size) (never BOS); with `period` > 0 each
    document repeats its first `period` tokens, which TTT can learn. Bytes per
    target are 1..3 (BOS 0).
    """
    g = torch.Generator().manual_seed(seed)
    ids: list[int] = []
    for n in doc_lengths:
        body = torch.randint(2, vocab_size, (n - 1,), generator=g)
        if period > 0:
            body = body[:period].repeat((n - 1) // period + 1)[: n - 1]
        ids += [1] + body.tolist()
    ids.append(1)
    tokens = torch.tensor(ids, dtype=torch.long)
    token_bytes = torch.randint(1, 4, (tokens.numel(),), generator=g, dtype=torch.int32)
    token_bytes[tokens == 1] = 0
    return ValData(tokens=tokens, token_bytes=token_bytes, docs=find_docs(tokens))
