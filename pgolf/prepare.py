"""`pgolf data prepare`: documents -> tokenizer -> challenge-format shards + manifest.

Split as in the challenge: validation is the first `val_docs` documents,
training the rest, in order. The tokenizer is trained on the training split
only (validation text must not shape the vocabulary). A training document
whose text equals a validation document is dropped, so the #2127 overlap
(val docs inside the training shards) cannot happen by construction;
`pgolf data check` verifies it again on the token streams.

Byte sidecars: CaseOps directories get `fineweb_val_bytes_*.bin`, the exact
original bytes per token, as the challenge's CaseOps export does. Plain
SentencePiece directories get none, like the challenge's sp1024/sp8192
exports; their bytes come from the LUT rule (`pgolf.bpb`) when read.

Everything is written into a temporary sibling directory which replaces
DIR only once complete, so a failure leaves existing data untouched. A DIR
that already holds shards is refused unless `overwrite`.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Iterable

import numpy as np
import sentencepiece as spm
from tqdm import tqdm

import pgolf
from pgolf.caseops import OPERATORS
from pgolf.caseops import encode as caseops_encode
from pgolf.corpus import corpus_sha256, embedded_corpus, embedded_corpus_sha256, python_minor, read_source
from pgolf.data import MANIFEST_NAME, TOKENIZER_NAME
from pgolf.encoding import DocumentEncoder, min_vocab_size
from pgolf.errors import DataError
from pgolf.shards import shard_name, write_shard
from pgolf.tokenizer import BOS_ID, EOS_ID, MAX_VOCAB, PAD_ID, UNK_ID, file_sha256

MANIFEST_FORMAT = "pgolf-data-v1"
_ENCODE_BATCH_DOCS = 256


def train_sentencepiece(texts: Iterable[str], vocab_size: int, model_path: str | Path, caseops: bool) -> Path:
    """Train a BPE model on `texts` (already CaseOps-encoded when `caseops`) and write it to `model_path`."""
    model_path = Path(model_path)
    if not min_vocab_size(caseops) <= vocab_size <= MAX_VOCAB:
        raise DataError(f"vocab_size {vocab_size} is out of range "
                        f"[{min_vocab_size(caseops)}, {MAX_VOCAB}] for this tokenizer recipe")
    proto = io.BytesIO()
    options = dict(
        model_type="bpe", vocab_size=vocab_size, character_coverage=0.999, byte_fallback=True,
        split_digits=True, normalization_rule_name="nmt_nfkc", add_dummy_prefix=False,
        pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID, hard_vocab_limit=False,
        # Determinism: one thread, every sentence, in the order given.
        num_threads=1, input_sentence_size=0, shuffle_input_sentence=False,
        # Documents, not sentences: keep long ones instead of silently skipping them.
        max_sentence_length=1 << 18, minloglevel=2,
    )
    if caseops:
        options["user_defined_symbols"] = list(OPERATORS)
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise DataError(f"{model_path}: no non-empty training documents to train the tokenizer on")
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=proto, **options)
    except RuntimeError as e:
        raise DataError(f"{model_path}: SentencePiece training failed: {str(e).splitlines()[0]}") from None
    model_path.parent.mkdir(parents=True, exist_ok=True)
    model_path.write_bytes(proto.getvalue())
    return model_path


def _data_files(d: Path) -> list[Path]:
    """Files pgolf owns in a data directory (everything else there is left alone)."""
    if not d.is_dir():
        return []
    names = {MANIFEST_NAME, TOKENIZER_NAME}
    return [p for p in d.iterdir() if p.name in names or (p.name.startswith("fineweb_") and p.suffix == ".bin")]


def has_shards(d: Path) -> bool:
    return d.is_dir() and any(d.glob("fineweb_*.bin"))


class _ShardWriter:
    """Streams tokens (and optional byte counts) into fixed-size shards."""

    def __init__(self, out_dir: Path, kind: str, shard_tokens: int, with_bytes: bool):
        self.out_dir, self.kind, self.shard_tokens, self.with_bytes = out_dir, kind, shard_tokens, with_bytes
        self._tok: list[np.ndarray] = []
        self._bytes: list[np.ndarray] = []
        self._buffered = 0
        self.num_shards = 0
        self.num_tokens = 0

    def add(self, ids: list[int], counts: list[int]) -> None:
        self._tok.append(np.asarray(ids, dtype=np.uint16))
        if self.with_bytes:
            self._bytes.append(np.asarray(counts, dtype=np.uint16))
        self._buffered += len(ids)
        self.num_tokens += len(ids)
        while self._buffered >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def _flush(self, n: int) -> None:
        tok = np.concatenate(self._tok)
        write_shard(self.out_dir / shard_name(self.kind, self.num_shards), tok[:n])
        self._tok = [tok[n:]]
        if self.with_bytes:
            byt = np.concatenate(self._bytes)
            write_shard(self.out_dir / shard_name("val_bytes", self.num_shards), byt[:n])
            self._bytes = [byt[n:]]
        self._buffered -= n
        self.num_shards += 1

    def close(self) -> None:
        if self._buffered:
            self._flush(self._buffered)


def _load_docs(source: str) -> tuple[list[str], dict]:
    if source == "embedded":
        docs = embedded_corpus()
        return docs, {"kind": "embedded", "python": python_minor(), "sha256": embedded_corpus_sha256()}
    path = Path(source)
    docs = read_source(path)
    return docs, {"kind": "jsonl" if path.suffix.lower() == ".jsonl" else "txt", "path": str(path.resolve()),
                  "file_sha256": file_sha256(path), "sha256": corpus_sha256(docs)}


def _check_args(out_dir: Path, vocab_size: int, val_docs: int, caseops: bool, shard_tokens: int,
                overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a directory")
    if has_shards(out_dir) and not overwrite:
        raise DataError(f"{out_dir}: already holds shards; pass --overwrite to replace them")
    if val_docs < 1:
        raise DataError(f"--val-docs must be >= 1, got {val_docs}")
    if shard_tokens < 1:
        raise DataError(f"--shard-tokens must be >= 1, got {shard_tokens}")
    if not min_vocab_size(caseops) <= vocab_size <= 65536:
        raise DataError(f"--vocab-size {vocab_size} is out of range [{min_vocab_size(caseops)}, 65536]")


def prepare_data(source: str, out_dir: str | Path, vocab_size: int, val_docs: int, caseops: bool,
                 shard_tokens: int, overwrite: bool, progress: bool = True, tokenizer: str | Path | None = None
                 ) -> dict:
    """Tokenize `source` into DIR (see the module docstring); returns the manifest written."""
    out_dir = Path(out_dir)
    _check_args(out_dir, vocab_size, val_docs, caseops, shard_tokens, overwrite)
    docs, source_info = _load_docs(source)
    if val_docs >= len(docs):
        raise DataError(f"{source}: --val-docs {val_docs} leaves no training documents ({len(docs)} in total)")
    val_texts = docs[:val_docs]
    val_set = set(val_texts)
    train_texts = [d for d in docs[val_docs:] if d not in val_set]
    num_dropped = len(docs) - val_docs - len(train_texts)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        manifest = _build(tmp, val_texts, train_texts, vocab_size, caseops, shard_tokens, progress, tokenizer)
        manifest.update(source=source_info, corpus_sha256=source_info["sha256"],
                        num_train_docs_dropped_as_val_duplicates=num_dropped)
        _write_json(tmp / MANIFEST_NAME, manifest)
        _swap_in(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _build(tmp: Path, val_texts: list[str], train_texts: list[str], vocab_size: int, caseops: bool,
           shard_tokens: int, progress: bool, tokenizer: str | Path | None) -> dict:
    model_path = tmp / TOKENIZER_NAME
    if tokenizer is not None:
        try:
            shutil.copyfile(tokenizer, model_path)
        except OSError as e:
            raise DataError(f"{tokenizer}: cannot read tokenizer model ({e.strerror})") from None
    else:
        texts = [caseops_encode(t) for t in train_texts] if caseops else train_texts
        train_sentencepiece(texts, vocab_size, model_path, caseops=caseops)
    tok = DocumentEncoder(model_path, caseops=caseops)

    bar = tqdm(total=len(val_texts) + len(train_texts), unit="doc", desc="tokenize",
               disable=None if progress else True)  # None: only on a terminal
    val_writer = _ShardWriter(tmp, "val", shard_tokens, with_bytes=caseops)
    val_doc_bytes = _write_split(tok, val_texts, val_writer, bar)
    train_writer = _ShardWriter(tmp, "train", shard_tokens, with_bytes=False)
    _write_split(tok, train_texts, train_writer, bar)
    bar.close()

    files = {}
    for p in sorted(tmp.iterdir()):
        files[p.name] = {"sha256": file_sha256(p), "bytes": p.stat().st_size}
    return {
        "format": MANIFEST_FORMAT,
        "pgolf_version": pgolf.__version__,
        "caseops": bool(caseops),
        "vocab_size": tok.vocab_size,
        "vocab_size_requested": int(vocab_size),
        "tokenizer": TOKENIZER_NAME,
        "tokenizer_sha256": tok.sha256,
        "tokenizer_trained": tokenizer is None,
        "byte_source": "sidecar" if caseops else "lut",
        "split": {"val": "first N documents", "train": "the rest, minus exact duplicates of a val document"},
        "num_val_docs": len(val_texts),
        "num_train_docs": len(train_texts),
        "num_val_tokens": val_writer.num_tokens,
        "num_train_tokens": train_writer.num_tokens,
        "num_val_shards": val_writer.num_shards,
        "num_train_shards": train_writer.num_shards,
        "shard_tokens": int(shard_tokens),
        "num_val_bytes": int(sum(val_doc_bytes)),
        "val_doc_bytes": val_doc_bytes,
        "files": files,
    }


def _write_split(tok: DocumentEncoder, texts: list[str], writer: _ShardWriter, bar) -> list[int]:
    """Encode and shard one split; returns each document's UTF-8 length."""
    doc_bytes = []
    for i in range(0, len(texts), _ENCODE_BATCH_DOCS):
        batch = texts[i:i + _ENCODE_BATCH_DOCS]
        for j, (text, (ids, counts)) in enumerate(zip(batch, tok.encode_docs(batch))):
            if len(ids) < 2:
                raise DataError(f"{writer.kind} document {i + j}: nothing left after the tokenizer's normalization")
            doc_bytes.append(len(text.encode("utf-8")))
            assert sum(counts) == doc_bytes[-1], "per-token bytes must sum to the document's UTF-8 length"
            writer.add(ids, counts)
        bar.update(len(batch))
    writer.close()
    return doc_bytes


def _write_json(path: Path, obj: dict) -> None:
    import json

    path.write_text(json.dumps(obj, indent=1) + "\n")


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Replace DIR's data files with tmp's; files in DIR that pgolf does not own stay."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    stale = {p.name for p in _data_files(old)}
    for p in old.iterdir():
        if p.name not in stale:
            os.replace(p, out_dir / p.name)
    shutil.rmtree(old, ignore_errors=True)


def summary_lines(out_dir: Path, m: dict, seconds: float) -> list[str]:
    src = m["source"]
    where = src.get("path", f"embedded (Python {src.get('python')})")
    return [
        f"prepared {out_dir}",
        f"  source       {where}  sha256 {m['corpus_sha256'][:16]}",
        f"  tokenizer    {m['tokenizer']}  vocab {m['vocab_size']}  caseops {'on' if m['caseops'] else 'off'}  "
        f"sha256 {m['tokenizer_sha256'][:16]}",
        f"  val          {m['num_val_docs']:>8,} docs {m['num_val_tokens']:>12,} tokens "
        f"{m['num_val_shards']} shard(s)  {m['num_val_bytes']:,} bytes ({m['byte_source']})",
        f"  train        {m['num_train_docs']:>8,} docs {m['num_train_tokens']:>12,} tokens "
        f"{m['num_train_shards']} shard(s)",
        f"  dropped      {m['num_train_docs_dropped_as_val_duplicates']} train docs identical to a val doc",
        f"  took         {seconds:.1f} s",
    ]
