"""Reading a data directory: manifest, training shards and the validation stream.

The validation stream is every `fineweb_val_*.bin` shard concatenated: BOS
(id 1) starts each document and documents run across shard boundaries. The
unit of scoring is a document span (`find_docs`): doc i covers positions
`[bos_i, bos_{i+1}]` inclusive, so its last target is the next document's BOS,
and the last doc runs to the end of the stream. Over all docs the targets are
exactly positions 1..N-1, each once.

`ValData.token_bytes[i]` is what token i costs as a target: the byte sidecar
when the directory has one (CaseOps), else the plain-SentencePiece LUT rule
(`pgolf.bpb`). The same code reads pgolf-prepared and challenge-downloaded
directories; the tokenizer is found through the manifest, `tokenizer.model` or the challenge's
`tokenizers/` folder (`tokenizer_path`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pgolf.bpb import build_byte_luts, lut_token_bytes
from pgolf.errors import DataError
from pgolf.shards import read_concat, shard_paths
from pgolf.tokenizer import BOS_ID, Tokenizer, file_sha256

MANIFEST_NAME = "manifest.json"


TOKENIZER_NAME = "tokenizer.model"


def manifest_sha256(data_dir: str | Path) -> str:
    """The data's identity, which reports record as `data_manifest_sha256`: the SHA-256 of DIR/manifest.json,
    or, for a directory as the challenge's download leaves it (no manifest), the SHA-256 of the listing
    pgolf computes itself: every shard's and the tokenizer's name and SHA-256."""
    p = Path(data_dir) / MANIFEST_NAME
    if p.exists():
        return hashlib.sha256(p.read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps(file_hashes(data_dir), sort_keys=True).encode()).hexdigest()


def file_hashes(data_dir: str | Path) -> dict[str, str]:
    """{file name: SHA-256} of the shards and the tokenizer of a directory without a manifest."""
    data_dir = Path(data_dir)
    paths = [p for kind in ("train", "val", "val_bytes") for p in shard_paths(data_dir, kind)]
    tok = tokenizer_path(data_dir)
    if tok.exists():
        paths.append(tok)
    return {p.name: file_sha256(p) for p in paths}


def load_manifest(data_dir: str | Path) -> dict:
    """DIR/manifest.json as a dict (DataError if missing or not JSON)."""
    path = Path(data_dir) / MANIFEST_NAME
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: no manifest; prepare the directory with `pgolf data prepare` or "
                        "`pgolf data download`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: expected a JSON object")
    return manifest


def tokenizer_path(data_dir: str | Path, manifest: dict | None = None) -> Path:
    """The directory's SentencePiece model: the manifest's `tokenizer` entry, else DIR/tokenizer.model, else
    the one `*.model` file the challenge's layouts put beside the shards, in `DIR/../tokenizers/` or in
    `DIR/../../tokenizers/` (`data/datasets/<name>/` next to `data/tokenizers/`). Where none is found, the
    returned path (DIR/tokenizer.model) does not exist and callers say so."""
    data_dir = Path(data_dir)
    if (manifest or {}).get("tokenizer"):
        return data_dir / manifest["tokenizer"]
    if (data_dir / TOKENIZER_NAME).exists():
        return data_dir / TOKENIZER_NAME
    for folder in (data_dir, data_dir.parent / "tokenizers", data_dir.parent.parent / "tokenizers"):
        models = sorted(folder.glob("*.model")) if folder.is_dir() else []
        if len(models) == 1:
            return models[0]
    return data_dir / TOKENIZER_NAME


def train_files(data_dir: str | Path) -> list[Path]:
    """Sorted training shards (DataError when there are none)."""
    paths = shard_paths(data_dir, "train")
    if not paths:
        raise DataError(f"{data_dir}: no fineweb_train_*.bin shards")
    return paths


def find_docs(tokens) -> list[tuple[int, int]]:
    """`(start, length)` per document: `[bos_i, bos_{i+1}]` inclusive, the last one to the end of the stream.

    A trailing lone BOS is already the previous doc's last target and gets no span of its own.
    """
    arr = tokens.cpu().numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
    n = int(arr.size)
    bos = np.flatnonzero(arr == BOS_ID)
    docs = [(int(s), int(e) - int(s) + 1) for s, e in zip(bos[:-1], bos[1:])]
    if bos.size and n - int(bos[-1]) >= 2:
        docs.append((int(bos[-1]), n - int(bos[-1])))
    return docs


@dataclass
class ValData:
    """The validation stream and what each token costs in original bytes as a target."""

    tokens: torch.Tensor        # int64 [N], starts with BOS
    token_bytes: torch.Tensor   # int32 [N], BOS = 0
    docs: list[tuple[int, int]] = field(default_factory=list)
    byte_source: str = "sidecar"  # "sidecar" | "lut"

    @property
    def num_targets(self) -> int:
        return int(self.tokens.numel()) - 1

    @property
    def num_docs(self) -> int:
        return len(self.docs)

    @property
    def target_bytes_total(self) -> int:
        """Bytes charged for all targets (positions 1..N-1)."""
        return int(self.token_bytes[1:].sum())


def _val_byte_counts(data_dir: Path, tokens: np.ndarray) -> tuple[np.ndarray, str]:
    sidecars = shard_paths(data_dir, "val_bytes")
    if sidecars:
        counts = read_concat(sidecars)
        if counts.size != tokens.size:
            raise DataError(f"{data_dir}: byte sidecars hold {counts.size} counts but the val shards hold "
                            f"{tokens.size} tokens (fineweb_val_bytes_*.bin must align 1:1 with fineweb_val_*.bin)")
        return counts.astype(np.int32), "sidecar"

    manifest = load_manifest(data_dir) if (data_dir / MANIFEST_NAME).exists() else {}
    path = tokenizer_path(data_dir, manifest)
    if not path.exists():
        raise DataError(f"{data_dir}: no byte sidecar and no tokenizer model ({path.name}) to count bytes with")
    if manifest.get("caseops"):
        raise DataError(f"{data_dir}: CaseOps data without fineweb_val_bytes_*.bin sidecars cannot be scored")
    sp = Tokenizer(path).sp
    try:
        return lut_token_bytes(tokens, build_byte_luts(sp)), "lut"
    except ValueError as e:
        raise DataError(f"{data_dir}: {e}") from None


def load_val(data_dir: str | Path, include_tail: bool = True, val_docs_limit: int = 0,
             seq_len: int | None = None) -> ValData:
    """Load the validation stream with per-target byte counts.

    include_tail=True keeps the whole stream (the seed); False truncates it to
    `((N-1) // seq_len) * seq_len + 1` tokens (R27). val_docs_limit=N > 0
    keeps the first N docs plus the next BOS as the last target, for quick runs.
    """
    data_dir = Path(data_dir)
    paths = shard_paths(data_dir, "val")
    if not paths:
        raise DataError(f"{data_dir}: no fineweb_val_*.bin shards")
    tokens = read_concat(paths)
    if tokens.size == 0 or int(tokens[0]) != BOS_ID:
        raise DataError(f"{paths[0]}: the validation stream must start with BOS (id {BOS_ID})")
    counts, source = _val_byte_counts(data_dir, tokens)
    if val_docs_limit < 0:
        raise ValueError(f"val_docs_limit must be >= 0, got {val_docs_limit}")
    if val_docs_limit > 0:
        bos = np.flatnonzero(tokens == BOS_ID)
        if val_docs_limit < bos.size:
            end = int(bos[val_docs_limit]) + 1  # the next doc's BOS stays as the last target
            tokens, counts = tokens[:end], counts[:end]
    if not include_tail:
        if seq_len is None or seq_len <= 0:
            raise ValueError("load_val(include_tail=False) needs seq_len > 0")
        end = ((tokens.size - 1) // seq_len) * seq_len + 1
        if end < 2:
            raise DataError(f"{data_dir}: the validation stream ({tokens.size} tokens) is shorter than one "
                            f"sequence of {seq_len}")
        tokens, counts = tokens[:end], counts[:end]
    tok = torch.from_numpy(tokens.astype(np.int64))
    return ValData(tokens=tok, token_bytes=torch.from_numpy(counts.astype(np.int32)), docs=find_docs(tok),
                   byte_source=source)
