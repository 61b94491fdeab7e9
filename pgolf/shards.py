"""Token shards in the challenge's binary format, read and written.

A shard is a 1,024-byte header of 256 little-endian int32 (magic 20240520,
version 1, token count, the rest zero) followed by the tokens as uint16
little-endian. The file size must be exactly 1024 + 2 * num_tokens: the
challenge's loader refuses anything else, and so do we. The per-token byte
sidecar `fineweb_val_bytes_*.bin` uses the same layout, so one reader serves
tokens and sidecars, for pgolf-prepared and challenge-downloaded directories
alike. Reads are memory-mapped so 100M-token shards cost no RAM up front.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pgolf.errors import DataError

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAX_TOKEN_ID = np.iinfo(np.uint16).max

_PREFIX = {"train": "fineweb_train_", "val": "fineweb_val_", "val_bytes": "fineweb_val_bytes_"}


def shard_name(kind: str, index: int) -> str:
    """`fineweb_<kind>_%06d.bin`, the challenge's naming."""
    if kind not in _PREFIX:
        raise ValueError(f"shard kind must be one of {sorted(_PREFIX)}, got {kind!r}")
    return f"{_PREFIX[kind]}{index:06d}.bin"


def write_shard(path: str | Path, tokens: np.ndarray) -> None:
    """Write `tokens` (any integer array with values in [0, 65535]) as one shard, atomically."""
    path = Path(path)
    tokens = np.asarray(tokens)
    assert tokens.ndim == 1, f"tokens must be 1-D, got shape {tokens.shape}"
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) > MAX_TOKEN_ID):
        raise DataError(f"{path}: token values must fit uint16 (got range {tokens.min()}..{tokens.max()})")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, tokens.size
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2", copy=False).tobytes())
    os.replace(tmp, path)


def read_header(path: str | Path) -> int:
    """Validate a shard's header and size; return its token count."""
    path = Path(path)
    try:
        size_bytes = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except OSError as e:
        raise DataError(f"{path}: cannot read shard ({e.strerror})") from None
    if len(raw) < HEADER_BYTES:
        raise DataError(f"{path}: truncated shard: {size_bytes} bytes is shorter than the {HEADER_BYTES}-byte header")
    header = np.frombuffer(raw, dtype="<i4")
    if int(header[0]) != MAGIC:
        raise DataError(f"{path}: wrong magic number {int(header[0])} (expected {MAGIC}); not a token shard")
    if int(header[1]) != VERSION:
        raise DataError(f"{path}: unsupported shard version {int(header[1])} (expected {VERSION})")
    num_tokens = int(header[2])
    expected_bytes = HEADER_BYTES + 2 * num_tokens
    if num_tokens < 0 or size_bytes != expected_bytes:
        what = "truncated shard" if size_bytes < expected_bytes else "shard size mismatch"
        raise DataError(f"{path}: {what}: header says {num_tokens} tokens ({expected_bytes} bytes), "
                        f"file has {size_bytes} bytes")
    return num_tokens


def read_shard(path: str | Path) -> np.ndarray:
    """The shard's tokens as a read-only uint16 memmap (DataError on a bad header or size)."""
    num_tokens = read_header(path)
    if num_tokens == 0:
        return np.zeros(0, dtype=np.uint16)
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(num_tokens,))


def shard_paths(data_dir: str | Path, kind: str) -> list[Path]:
    """Sorted shards of one kind (`train`, `val`, `val_bytes`); `val` never includes the byte sidecars."""
    if kind not in _PREFIX:
        raise ValueError(f"shard kind must be one of {sorted(_PREFIX)}, got {kind!r}")
    paths = sorted(Path(data_dir).glob(f"{_PREFIX[kind]}*.bin"))
    if kind == "val":
        paths = [p for p in paths if "_bytes_" not in p.name]
    return paths


def read_concat(paths: list[Path]) -> np.ndarray:
    """Concatenate several shards into one in-memory uint16 array (the val stream is small enough)."""
    parts = [read_shard(p) for p in paths]
    if not parts:
        return np.zeros(0, dtype=np.uint16)
    return np.concatenate([np.asarray(p) for p in parts])
