"""Reading a data directory: document spans, per-target bytes, limits and truncation."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from pgolf.data import find_docs, load_manifest, load_val, train_files
from pgolf.errors import DataError
from pgolf.prepare import prepare_data
from pgolf.shards import read_shard, shard_paths, write_shard


def test_find_docs_golden():
    tokens = [1, 5, 6, 1, 7, 1, 8, 9]
    assert find_docs(tokens) == [(0, 4), (3, 3), (5, 3)]
    assert find_docs(torch.tensor(tokens)) == [(0, 4), (3, 3), (5, 3)]
    assert find_docs([1, 5, 1]) == [(0, 3)]  # a trailing lone BOS is the last target of the doc before it
    assert find_docs([]) == []


def test_targets_cover_every_position_once(tiny_data):
    val = load_val(tiny_data)
    covered = np.zeros(val.tokens.numel(), dtype=int)
    for start, length in val.docs:
        covered[start + 1:start + length] += 1
    assert covered[0] == 0 and (covered[1:] == 1).all()
    assert sum(length - 1 for _, length in val.docs) == val.num_targets == val.tokens.numel() - 1


def test_val_matches_manifest_per_doc(tiny_data):
    manifest = load_manifest(tiny_data)
    val = load_val(tiny_data)
    assert val.byte_source == "sidecar" and val.tokens.dtype == torch.int64 and val.token_bytes.dtype == torch.int32
    assert val.num_docs == manifest["num_val_docs"] == 60 and val.tokens.numel() == manifest["num_val_tokens"]
    assert int(val.tokens[0]) == 1 and (val.token_bytes[val.tokens == 1] == 0).all()
    per_doc = [int(val.token_bytes[s + 1:s + n].sum()) for s, n in val.docs]
    assert per_doc == manifest["val_doc_bytes"] and val.target_bytes_total == manifest["num_val_bytes"]


def test_val_docs_limit_keeps_next_bos(tiny_data):
    full = load_val(tiny_data)
    val = load_val(tiny_data, val_docs_limit=5)
    assert val.num_docs == 5 and int(val.tokens[-1]) == 1
    assert val.tokens.numel() == full.docs[5][0] + 1
    assert val.target_bytes_total == sum(load_manifest(tiny_data)["val_doc_bytes"][:5])
    assert load_val(tiny_data, val_docs_limit=10_000).tokens.numel() == full.tokens.numel()


def test_truncation_without_tail(tiny_data):
    n = load_val(tiny_data).tokens.numel()
    val = load_val(tiny_data, include_tail=False, seq_len=64)
    assert val.tokens.numel() == ((n - 1) // 64) * 64 + 1 and val.num_targets % 64 == 0
    with pytest.raises(ValueError, match="seq_len"):
        load_val(tiny_data, include_tail=False)


def test_train_files(tiny_data, tmp_path):
    files = train_files(tiny_data)
    assert files == sorted(files) and len(files) == load_manifest(tiny_data)["num_train_shards"]
    assert sum(read_shard(f).size for f in files) == load_manifest(tiny_data)["num_train_tokens"]
    assert all(int(read_shard(f)[0]) == 1 for f in files[:1])
    with pytest.raises(DataError, match="no fineweb_train"):
        train_files(tmp_path)
    with pytest.raises(DataError, match="no manifest"):
        load_manifest(tmp_path)


def test_sidecar_misaligned(tiny_data, tmp_path):
    d = tmp_path / "d"
    shutil.copytree(tiny_data, d)
    side = shard_paths(d, "val_bytes")[0]
    write_shard(side, np.asarray(read_shard(side))[:-3])
    with pytest.raises(DataError, match="byte sidecars hold"):
        load_val(d)


@pytest.fixture(scope="module")
def plain_data(tmp_path_factory):
    from pgolf.corpus import embedded_corpus

    root = tmp_path_factory.mktemp("plain")
    src = root / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in embedded_corpus()[:250]))
    prepare_data(source=str(src), out_dir=root / "out", vocab_size=400, val_docs=20, caseops=False,
                 shard_tokens=10_000, overwrite=False, progress=False)
    return root / "out"


def test_plain_dir_uses_the_lut(plain_data):
    from pgolf.bpb import build_byte_luts, lut_token_bytes
    from pgolf.tokenizer import Tokenizer

    assert not shard_paths(plain_data, "val_bytes")
    val = load_val(plain_data)
    assert val.byte_source == "lut" and val.num_docs == 20
    sp = Tokenizer(plain_data / "tokenizer.model").sp
    assert val.token_bytes.tolist() == lut_token_bytes(val.tokens.numpy(), build_byte_luts(sp)).tolist()
    # the LUT counts normalized text, so it is close to (not equal to) the original bytes
    assert abs(val.target_bytes_total / load_manifest(plain_data)["num_val_bytes"] - 1) < 0.05


# --------------------------------------------------------------------------- data as the challenge downloads it
@pytest.fixture
def upstream_layout(tiny_data, tmp_path):
    """tiny_data's shards in the challenge's layout, without pgolf's manifest:
    data/datasets/fineweb10B_sp512/fineweb_*.bin and data/tokenizers/fineweb_512_bpe.model."""
    shards = tmp_path / "data" / "datasets" / "fineweb10B_sp512"
    shards.mkdir(parents=True)
    for p in tiny_data.glob("fineweb_*.bin"):
        shutil.copy(p, shards / p.name)
    (tmp_path / "data" / "tokenizers").mkdir()
    shutil.copy(tiny_data / "tokenizer.model", tmp_path / "data" / "tokenizers" / "fineweb_512_bpe.model")
    return shards


def test_data_without_a_manifest_is_checked_trained_and_evaluated(upstream_layout, tmp_path, capsys):
    from pgolf.app.cli import main
    from pgolf.data import manifest_sha256, tokenizer_path
    from pgolf.rundir import RunDir
    from pgolf.submission.audit import audit_paths

    assert tokenizer_path(upstream_layout).name == "fineweb_512_bpe.model"
    assert main(["data", "check", str(upstream_layout)]) == 0
    out = capsys.readouterr().out
    assert "token ids < vocab             PASS" in out and "all 8 checks passed" in out
    run = RunDir(tmp_path / "run")
    assert main(["run", "--preset", "tiny", "--data", str(upstream_layout), "--out", str(run.path), "--no-pack",
                 "--set", "train.iterations=2", "--set", "eval.val_docs_limit=4", "--set", "ttt.enabled=false"]) == 0
    rep = run.read_report()
    # pgolf hashed the files itself and recorded that identity; the audit re-hashes and agrees
    assert rep.data_manifest_sha256 == manifest_sha256(upstream_layout) and rep.val_bpb_roundtrip > 0
    data_checks = [c for c in audit_paths([run.path]) if c.name == "data.manifest"]
    assert data_checks and data_checks[0].status == "PASS" and "no manifest" in data_checks[0].detail
    # and a changed shard changes the identity, which the audit then flags
    shard = next(upstream_layout.glob("fineweb_val_0*.bin"))
    shard.write_bytes(shard.read_bytes()[:-2] + b"\x02\x00")
    assert manifest_sha256(upstream_layout) != rep.data_manifest_sha256
    assert [c.status for c in audit_paths([run.path]) if c.name == "data.manifest"] == ["FAIL"]
