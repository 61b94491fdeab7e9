"""Bad data given to the command line: one `pgolf: error:` line naming what and where, exit 2.

The record-folder cases (no logs, a cut-off log, a broken submission.json, seeds with
different code) are in test_upstream_audit.py and test_pack.py; these are the data ones:
train shards without val shards, and a tokenizer whose vocabulary the shards exceed.
"""

from __future__ import annotations

import shutil

import pytest

from pgolf.app.cli import main


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory):
    """A 400-piece tokenizer: smaller than the 512 pieces tiny_data's shards use."""
    from pgolf.prepare import prepare_data

    out = tmp_path_factory.mktemp("data") / "v400"
    prepare_data(source="embedded", out_dir=out, vocab_size=400, val_docs=10, caseops=False, shard_tokens=200_000,
                 overwrite=False, progress=False)
    return out / "tokenizer.model"


def _challenge_layout(src, dst, pattern: str):
    dst.mkdir()
    for p in src.glob(pattern):
        shutil.copy(p, dst / p.name)
    return dst


def _error_line(capsys, *needles: str) -> None:
    err = capsys.readouterr().err
    lines = [t for t in err.splitlines() if t.startswith("pgolf: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


def test_train_shards_without_val_shards(tiny_data, tmp_path, capsys):
    d = _challenge_layout(tiny_data, tmp_path / "d", "fineweb_train_*.bin")
    shutil.copy(tiny_data / "tokenizer.model", d / "tokenizer.model")
    assert main(["data", "check", str(d)]) == 2
    _error_line(capsys, str(d), "no fineweb_val_*.bin shards")
    assert main(["train", "--preset", "tiny", "--data", str(d), "--out", str(tmp_path / "run"),
                 "--max-steps", "1"]) == 2
    _error_line(capsys, str(d), "no fineweb_val_*.bin shards")
    assert not (tmp_path / "run").exists()  # refused before the run directory is made
    assert main(["run", "--preset", "tiny", "--data", str(d), "--out", str(tmp_path / "run2")]) == 2
    _error_line(capsys, str(d), "no fineweb_val_*.bin shards")
    assert not (tmp_path / "run2").exists()


def test_tokenizer_smaller_than_the_shards_vocabulary(tiny_data, small_tokenizer, tmp_path, capsys):
    from pgolf.prepare import prepare_data

    d = _challenge_layout(tiny_data, tmp_path / "d", "fineweb_*.bin")
    assert main(["data", "check", str(d), "--tokenizer", str(small_tokenizer)]) == 2
    _error_line(capsys, "token ids < vocab", ">= vocab size 400")
    # Plain shards (bytes counted through the tokenizer): train refuses before it starts.
    plain = tmp_path / "plain"
    prepare_data(source="embedded", out_dir=plain, vocab_size=512, val_docs=10, caseops=False, shard_tokens=200_000,
                 overwrite=False, progress=False, tokenizer=str(tiny_data / "tokenizer.model"))
    d = _challenge_layout(plain, tmp_path / "d2", "fineweb_*.bin")
    shutil.copy(small_tokenizer, d / "tokenizer.model")
    assert main(["train", "--preset", "tiny", "--data", str(d), "--out", str(tmp_path / "run"),
                 "--max-steps", "1"]) == 2
    _error_line(capsys, str(d), "outside the tokenizer's vocabulary (400)")
