"""Documents as shard tokens, with the challenge's recipe and exact byte accounting (data preparation).

Training (`prepare.train_sentencepiece`) follows `data/download_hf_docs_and_tokenize.py` of the challenge: BPE,
character coverage 0.999, byte fallback, split digits, NFKC, no dummy prefix,
pad/bos/eos/unk = 0/1/2/3, soft vocabulary limit. With CaseOps the four
operator characters are user-defined symbols, so they get ids 4-7 and always
tokenize alone. Training is single-threaded over the documents in their given
order, so the same texts give the same model bytes.

A document is encoded as `[BOS] + pieces` (no EOS). Alongside the ids,
`encode_doc` returns how many bytes of the ORIGINAL text each token stands
for. SentencePiece reports where every piece starts in its (un-normalized)
input; a token owns the input from its own start to the next token's start,
the first token also owns any whitespace SentencePiece dropped in front, the
last one anything dropped at the end. Every input byte therefore lands in
exactly one token, and with CaseOps operators charged 0 bytes the per-token
counts sum to `len(original.encode("utf-8"))` by construction.

A run only reads token ids, so it needs `pgolf.tokenizer` (the model file and its checks) and never this
module: a packed record carries neither the encoder nor CaseOps.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pgolf.caseops import OPERATORS
from pgolf.caseops import decode as caseops_decode
from pgolf.caseops import encode as caseops_encode
from pgolf.errors import DataError
from pgolf.tokenizer import BOS_ID, Tokenizer

# UTF-8 of U+E001..U+E004 is EE 80 81..84. An ESC shields the operator after it,
# which is then text and keeps its 3 bytes.
_OPERATOR_BYTES_RE = re.compile(rb"\xee\x80\x84(?:\xee\x80[\x81-\x84])?|\xee\x80[\x81-\x83]")


def min_vocab_size(caseops_on: bool) -> int:
    """Smallest vocabulary the recipe can build: 4 specials, the operators, 256 byte pieces, one merge."""
    return 4 + (len(OPERATORS) if caseops_on else 0) + 256 + 1


def original_byte_costs(transformed_utf8: bytes, caseops_on: bool) -> np.ndarray:
    """Per input byte: 1 if it belongs to the original text, 0 if it belongs to a CaseOps operator."""
    costs = np.ones(len(transformed_utf8), dtype=np.int64)
    if caseops_on:
        for m in _OPERATOR_BYTES_RE.finditer(transformed_utf8):
            costs[m.start():m.start() + 3] = 0  # the operator itself; an escaped char after it keeps its bytes
    return costs


class DocumentEncoder(Tokenizer):
    """A tokenizer plus the document conventions (BOS first, CaseOps, byte counts)."""

    def __init__(self, model_path: str | Path, caseops: bool):
        super().__init__(model_path)
        self.caseops = bool(caseops)
        if self.caseops:
            for i, op in enumerate(OPERATORS):
                if self.sp.piece_to_id(op) != 4 + i:
                    raise DataError(f"{self.model_path}: CaseOps operator U+{ord(op):04X} is not token {4 + i}; "
                                    "train the tokenizer with --caseops or prepare with --no-caseops")

    def _transform(self, text: str) -> str:
        return caseops_encode(text) if self.caseops else text

    def encode_doc(self, text: str) -> tuple[list[int], list[int]]:
        """`([BOS] + ids, bytes)`: bytes[i] = original UTF-8 bytes of token i (BOS 0); sums to the doc's length."""
        return self.encode_docs([text])[0]

    def encode_docs(self, texts: list[str]) -> list[tuple[list[int], list[int]]]:
        """`encode_doc` over many documents at once (SentencePiece batches them natively)."""
        transformed = [self._transform(t) for t in texts]
        protos = self.sp.encode(transformed, out_type="proto")
        return [self._ids_and_bytes(t, p) for t, p in zip(transformed, protos)]

    def _ids_and_bytes(self, transformed: str, proto) -> tuple[list[int], list[int]]:
        raw = transformed.encode("utf-8")
        pieces = proto.pieces
        ids = [BOS_ID] + [p.id for p in pieces]
        if not pieces:
            return ids, [0]
        starts = np.fromiter((p.begin for p in pieces), dtype=np.int64, count=len(pieces))
        starts[0] = 0  # whitespace dropped before the first piece is still part of the document
        bounds = np.append(starts, len(raw))
        assert np.all(np.diff(bounds) >= 0), "SentencePiece piece offsets must be monotone"
        cum = np.concatenate([[0], np.cumsum(original_byte_costs(raw, self.caseops))])
        counts = cum[bounds[1:]] - cum[bounds[:-1]]
        return ids, [0] + counts.tolist()

    def decode_doc(self, ids) -> str:
        """The document text back from its ids (control tokens dropped, CaseOps undone)."""
        ids = [int(i) for i in ids if not self.sp.is_control(int(i))]
        text = self.sp.decode(ids)
        return caseops_decode(text) if self.caseops else text
