"""Shard format: exact header and size, memmapped reads, and a clear error for each way a file can be broken."""

from __future__ import annotations

import numpy as np
import pytest

from pgolf.errors import DataError
from pgolf.shards import HEADER_BYTES, MAGIC, VERSION, read_concat, read_header, read_shard, shard_name, shard_paths, \
    write_shard


def test_roundtrip_header_and_exact_size(tmp_path):
    tokens = np.array([1, 0, 65535, 7, 300], dtype=np.int64)
    p = tmp_path / shard_name("train", 3)
    write_shard(p, tokens)
    assert p.name == "fineweb_train_000003.bin"
    raw = p.read_bytes()
    assert len(raw) == 1024 + 2 * tokens.size
    header = np.frombuffer(raw[:HEADER_BYTES], dtype="<i4")
    assert header[0] == MAGIC == 20240520 and header[1] == VERSION == 1 and header[2] == 5
    assert not header[3:].any()
    assert raw[HEADER_BYTES:] == tokens.astype("<u2").tobytes()
    got = read_shard(p)
    assert isinstance(got, np.memmap) and got.dtype == np.uint16
    assert got.tolist() == tokens.tolist()
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temp file


def test_empty_shard(tmp_path):
    write_shard(tmp_path / "e.bin", np.zeros(0, dtype=np.uint16))
    assert read_header(tmp_path / "e.bin") == 0 and read_shard(tmp_path / "e.bin").size == 0


def test_values_outside_uint16_are_refused(tmp_path):
    with pytest.raises(DataError, match="uint16"):
        write_shard(tmp_path / "x.bin", np.array([1, 70000]))
    assert not (tmp_path / "x.bin").exists()


def _shard(tmp_path, n=10):
    p = tmp_path / "fineweb_val_000000.bin"
    write_shard(p, np.arange(n))
    return p


@pytest.mark.parametrize("damage,message", [
    (lambda raw: raw[:-2], "truncated shard"),
    (lambda raw: raw[:100], "shorter than the 1024-byte header"),
    (lambda raw: raw + b"\0\0", "size mismatch"),
    (lambda raw: np.int32(12345).tobytes() + raw[4:], "wrong magic number 12345"),
    (lambda raw: raw[:4] + np.int32(2).tobytes() + raw[8:], "unsupported shard version 2"),
])
def test_damaged_shards_name_file_and_problem(tmp_path, damage, message):
    p = _shard(tmp_path)
    p.write_bytes(damage(p.read_bytes()))
    with pytest.raises(DataError, match=message) as e:
        read_shard(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="cannot read shard"):
        read_shard(tmp_path / "nope.bin")


def test_shard_paths_sorted_and_val_excludes_sidecars(tmp_path):
    for kind, i in [("val", 1), ("val", 0), ("val_bytes", 0), ("train", 10), ("train", 2)]:
        write_shard(tmp_path / shard_name(kind, i), np.array([1, 2]))
    assert [p.name for p in shard_paths(tmp_path, "val")] == ["fineweb_val_000000.bin", "fineweb_val_000001.bin"]
    assert [p.name for p in shard_paths(tmp_path, "val_bytes")] == ["fineweb_val_bytes_000000.bin"]
    assert [p.name for p in shard_paths(tmp_path, "train")] == ["fineweb_train_000002.bin", "fineweb_train_000010.bin"]
    assert read_concat(shard_paths(tmp_path, "val")).tolist() == [1, 2, 1, 2]
    with pytest.raises(ValueError):
        shard_paths(tmp_path, "test")
