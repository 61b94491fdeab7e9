"""A SentencePiece model as the shards use it: the special ids, the model file loaded and checked, hashing.

This is all of tokenization a run needs (it reads token ids, and counts bytes from a model only for
data without byte sidecars); turning text into tokens with their byte counts, CaseOps included, is
data preparation's `pgolf.encoding`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import sentencepiece as spm

from pgolf.errors import DataError

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
MAX_VOCAB = 65536  # shards store uint16 ids


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Tokenizer:
    """A SentencePiece model file (`.sp`, the processor), checked against the shard format: ids fit uint16, BOS is 1."""

    def __init__(self, model_path: str | Path):
        self.model_path = Path(model_path)
        try:
            model_bytes = self.model_path.read_bytes()
        except OSError as e:
            raise DataError(f"{self.model_path}: cannot read tokenizer model ({e.strerror})") from None
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(model_bytes)
        except RuntimeError:
            raise DataError(f"{self.model_path}: not a SentencePiece model") from None
        self.sha256 = hashlib.sha256(model_bytes).hexdigest()
        self.vocab_size = int(self.sp.vocab_size())
        if self.vocab_size > MAX_VOCAB:
            raise DataError(f"{self.model_path}: vocab size {self.vocab_size} does not fit uint16 shards")
        if self.sp.bos_id() != BOS_ID:
            raise DataError(f"{self.model_path}: BOS id is {self.sp.bos_id()}, the shard format needs {BOS_ID}")
