"""`pgolf data check`: a clean directory passes; each kind of damage fails with one line naming the file."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pgolf.check import FAIL, PASS, SKIP, check_data, format_table
from pgolf.app.cli import main
from pgolf.shards import read_shard, shard_paths, write_shard
from pgolf.tokenizer import file_sha256


@pytest.fixture
def data_copy(tiny_data, tmp_path):
    d = tmp_path / "d"
    shutil.copytree(tiny_data, d)
    return d


def _refresh_manifest(d):
    """Re-hash the files so only the damage under test fails (not the manifest hashes)."""
    m = json.loads((d / "manifest.json").read_text())
    m["files"] = {p.name: {"sha256": file_sha256(p), "bytes": p.stat().st_size}
                  for p in sorted(d.iterdir()) if p.name != "manifest.json"}
    (d / "manifest.json").write_text(json.dumps(m))


def _status(results):
    return {r.name: r.status for r in results}


def test_clean_dir_passes(tiny_data):
    results = check_data(tiny_data)
    assert all(r.status == PASS for r in results), format_table(results)
    names = [r.name for r in results]
    assert names == ["manifest", "shard headers", "manifest hashes", "token ids < vocab", "BOS at doc starts",
                     "sidecar length", "sidecar total == UTF-8 bytes", "val/train overlap"]


def _run_cli(d, capsys):
    rc = main(["data", "check", str(d)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _assert_one_line_error(rc, err, *needles):
    assert rc != 0 and err.startswith("pgolf: error: ") and err.count("\n") == 1 and "Traceback" not in err
    for n in needles:
        assert n in err, err


def test_truncated_shard(data_copy, capsys):
    p = shard_paths(data_copy, "train")[1]
    p.write_bytes(p.read_bytes()[:-7])
    rc, out, err = _run_cli(data_copy, capsys)
    _assert_one_line_error(rc, err, str(p), "truncated shard")
    assert "FAIL" in out and "shard headers" in out


def test_wrong_magic(data_copy, capsys):
    p = shard_paths(data_copy, "val")[0]
    raw = bytearray(p.read_bytes())
    raw[:4] = np.int32(20240521).tobytes()
    p.write_bytes(bytes(raw))
    rc, _, err = _run_cli(data_copy, capsys)
    _assert_one_line_error(rc, err, str(p), "wrong magic number 20240521")


def test_sidecar_shorter_than_tokens(data_copy, capsys):
    side = shard_paths(data_copy, "val_bytes")[0]
    write_shard(side, np.asarray(read_shard(side))[:-10])
    _refresh_manifest(data_copy)
    rc, _, err = _run_cli(data_copy, capsys)
    _assert_one_line_error(rc, err, str(side), "sidecar shorter than its token shard")


def test_token_id_beyond_vocab(data_copy, capsys):
    p = shard_paths(data_copy, "train")[0]
    toks = np.asarray(read_shard(p)).copy()
    toks[123] = 600
    write_shard(p, toks)
    _refresh_manifest(data_copy)
    rc, _, err = _run_cli(data_copy, capsys)
    _assert_one_line_error(rc, err, str(p), "token id 600 at position 123 >= vocab size 512")


def test_val_train_overlap(data_copy, capsys):
    # Append two val docs to the last train shard: the #2127 bug in miniature.
    val = np.asarray(read_shard(shard_paths(data_copy, "val")[0]))
    bos = np.flatnonzero(val == 1)
    last = shard_paths(data_copy, "train")[-1]
    write_shard(last, np.concatenate([np.asarray(read_shard(last)), val[bos[2]:bos[4]]]))
    m = json.loads((data_copy / "manifest.json").read_text())
    m["num_train_docs"] += 2
    (data_copy / "manifest.json").write_text(json.dumps(m))
    _refresh_manifest(data_copy)
    results = check_data(data_copy)
    assert [r.name for r in results if r.status == FAIL] == ["val/train overlap"], format_table(results)
    rc, _, err = _run_cli(data_copy, capsys)
    _assert_one_line_error(rc, err, "2 of 2,254 training documents are identical to a validation document")


def test_sidecar_total_and_hash_mismatch(data_copy):
    side = shard_paths(data_copy, "val_bytes")[0]
    counts = np.asarray(read_shard(side)).copy()
    counts[5] += 1
    write_shard(side, counts)
    st = _status(check_data(data_copy))
    assert st["sidecar total == UTF-8 bytes"] == FAIL and st["manifest hashes"] == FAIL
    _refresh_manifest(data_copy)
    assert _status(check_data(data_copy))["manifest hashes"] == PASS


def test_downloaded_style_dir_without_manifest(data_copy):
    (data_copy / "manifest.json").unlink()
    st = _status(check_data(data_copy))
    assert st["manifest"] == SKIP and st["manifest hashes"] == SKIP and st["sidecar total == UTF-8 bytes"] == SKIP
    assert st["token ids < vocab"] == PASS and st["val/train overlap"] == PASS and st["sidecar length"] == PASS


def test_doc_hashes_cross_shard_boundaries(data_copy):
    # Re-split the train stream at odd sizes: docs now straddle shards, and the overlap count must not change.
    paths = shard_paths(data_copy, "train")
    stream = np.concatenate([np.asarray(read_shard(p)) for p in paths])
    for p in paths:
        p.unlink()
    for i, chunk in enumerate(np.array_split(stream, 7)):
        write_shard(data_copy / f"fineweb_train_{i:06d}.bin", chunk)
    (data_copy / "manifest.json").unlink()
    results = check_data(data_copy)
    overlap = next(r for r in results if r.name == "val/train overlap")
    assert overlap.status == PASS and "2,252 train docs" in overlap.detail


def test_not_a_directory(tmp_path, capsys):
    rc = main(["data", "check", str(tmp_path / "missing")])
    assert rc == 2 and "not a directory" in capsys.readouterr().err
