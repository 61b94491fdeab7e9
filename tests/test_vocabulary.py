"""A model and a data directory with different vocabularies: followed by default, refused in one line when set.

`other_data` is a small directory with a vocabulary of 600 (tiny_data and the tiny
preset have 512), so the tiny preset's default must follow it, an explicit 512 must be
refused, and a run trained on it must refuse to be evaluated or quantized on tiny_data.
"""

from __future__ import annotations

import json

import pytest

from pgolf.app.cli import main
from pgolf.corpus import embedded_corpus
from pgolf.errors import ConfigError, DataError
from pgolf.vocabulary import check_run_data, data_vocab, training_vocab

OTHER_VOCAB = 600


@pytest.fixture(scope="module")
def other_data(tmp_path_factory):
    from pgolf.prepare import prepare_data

    tmp = tmp_path_factory.mktemp("vocab")
    src = tmp / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in embedded_corpus()[:300]))
    out = tmp / "v600"
    prepare_data(source=str(src), out_dir=out, vocab_size=OTHER_VOCAB, val_docs=6, caseops=True,
                 shard_tokens=200_000, overwrite=False, progress=False)
    return out


@pytest.fixture(scope="module")
def other_run(other_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("vocab-run") / "run"
    assert main(["train", "--preset", "tiny", "--data", str(other_data), "--out", str(run), "--max-steps", "2",
                 "--set", "eval.val_docs_limit=2"]) == 0
    return run


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pgolf: error: "), err
    return err[0]


def test_data_vocab_reads_the_manifest(other_data, tiny_data):
    assert data_vocab(other_data).vocab_size == OTHER_VOCAB and data_vocab(tiny_data).vocab_size == 512
    assert data_vocab(other_data).tokenizer_sha256 != data_vocab(tiny_data).tokenizer_sha256


def test_default_vocab_follows_the_data_and_the_run_trains(other_run):
    cfg = json.loads((other_run / "config.json").read_text())
    assert cfg["model"]["vocab_size"] == OTHER_VOCAB
    rep = json.loads((other_run / "report.json").read_text())
    assert rep["steps"] == 2 and len(rep["tokenizer_sha256"]) == 64


def test_explicit_vocab_that_differs_from_the_data_is_one_line(other_data, tmp_path, capsys):
    rc = main(["train", "--preset", "tiny", "--data", str(other_data), "--out", str(tmp_path / "r"),
               "--set", "model.vocab_size=512"])
    line = _one_error_line(capsys)
    assert rc == 2 and "512" in line and str(OTHER_VOCAB) in line and f"model.vocab_size={OTHER_VOCAB}" in line


def test_pipeline_holds_the_data_to_an_explicit_vocab_before_writing(other_data, tmp_path, capsys):
    rc = main(["run", "--preset", "tiny", "--data", str(other_data), "--out", str(tmp_path / "r"),
               "--set", "model.vocab_size=512"])
    line = _one_error_line(capsys)
    assert rc == 2 and "512" in line and str(OTHER_VOCAB) in line
    assert not (tmp_path / "r").exists()


def test_explicit_vocab_rules_only_when_set(other_data):
    assert training_vocab(512, False, other_data) == OTHER_VOCAB
    assert training_vocab(OTHER_VOCAB, True, other_data) == OTHER_VOCAB
    with pytest.raises(ConfigError):
        training_vocab(512, True, other_data)


def test_eval_on_data_of_another_tokenizer_is_one_line(other_run, tiny_data, capsys):
    rc = main(["eval", str(other_run), "--prequant", "--data", str(tiny_data)])
    line = _one_error_line(capsys)
    assert rc == 2 and "tokenizer" in line and str(tiny_data) in line


def test_quantize_on_data_of_another_tokenizer_is_one_line(other_run, tiny_data, capsys):
    # The run's data directory, re-prepared in place with another tokenizer, is what quantize reads.
    rep_path = other_run / "report.json"
    saved = rep_path.read_text()
    rep_path.write_text(json.dumps({**json.loads(saved), "data_dir": str(tiny_data)}))
    try:
        rc = main(["quantize", str(other_run)])
    finally:
        rep_path.write_text(saved)
    assert rc == 2 and "tokenizer" in _one_error_line(capsys)


def test_same_tokenizer_passes_and_a_run_without_a_hash_is_held_to_the_size(other_data, tiny_data):
    check_run_data(data_vocab(other_data).tokenizer_sha256, OTHER_VOCAB, other_data)
    check_run_data(None, 512, tiny_data)
    with pytest.raises(DataError):
        check_run_data(None, OTHER_VOCAB, tiny_data)
