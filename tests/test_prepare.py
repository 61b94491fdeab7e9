"""`pgolf data prepare`: manifest contents, determinism, safe replacement, user files and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pgolf.app.cli import main
from pgolf.corpus import embedded_corpus
from pgolf.data import load_manifest
from pgolf.errors import DataError
from pgolf.prepare import prepare_data
from pgolf.shards import read_header, read_shard, shard_paths
from pgolf.tokenizer import file_sha256

GPL3 = Path("/usr/share/common-licenses/GPL-3")


def _jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def _snapshot(d: Path) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in sorted(d.iterdir())}


def test_tiny_data_manifest(tiny_data):
    m = load_manifest(tiny_data)
    assert m["caseops"] and m["vocab_size"] == 512 and m["num_val_docs"] == 60 and m["byte_source"] == "sidecar"
    assert m["num_val_docs"] + m["num_train_docs"] == len(embedded_corpus())
    assert m["corpus_sha256"] == m["source"]["sha256"] and m["source"]["kind"] == "embedded"
    assert m["tokenizer_sha256"] == file_sha256(tiny_data / "tokenizer.model")
    for name, info in m["files"].items():
        assert file_sha256(tiny_data / name) == info["sha256"]
    for kind in ("val", "train"):
        paths = shard_paths(tiny_data, kind)
        assert len(paths) == m[f"num_{kind}_shards"]
        sizes = [read_header(p) for p in paths]
        assert sum(sizes) == m[f"num_{kind}_tokens"] and all(s == 200_000 for s in sizes[:-1])
    assert [read_header(p) for p in shard_paths(tiny_data, "val_bytes")] == \
        [read_header(p) for p in shard_paths(tiny_data, "val")]
    assert m["num_val_bytes"] == sum(len(d.encode()) for d in embedded_corpus()[:60])


def test_deterministic_and_dedups_val_copies(tmp_path):
    docs = embedded_corpus()[:120]
    src = _jsonl(tmp_path / "s.jsonl", docs + [docs[3], docs[50]])  # one val copy, one train copy
    kw = dict(source=str(src), vocab_size=400, val_docs=10, caseops=True, shard_tokens=5_000, overwrite=False,
              progress=False)
    a = prepare_data(out_dir=tmp_path / "a", **kw)
    b = prepare_data(out_dir=tmp_path / "b", **kw)
    assert a["files"] == b["files"] and a["tokenizer_sha256"] == b["tokenizer_sha256"]
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()
    assert a["num_train_docs_dropped_as_val_duplicates"] == 1 and a["num_train_docs"] == 111
    assert a["source"]["kind"] == "jsonl" and a["source"]["file_sha256"] == file_sha256(src)


def test_tokenizer_trained_on_train_split_only(tmp_path):
    marker = "zqxjvw " * 40  # a word only the val split contains: BPE must not learn it
    docs = [marker] + embedded_corpus()[:100]
    prepare_data(source=str(_jsonl(tmp_path / "s.jsonl", docs)), out_dir=tmp_path / "d", vocab_size=420,
                 val_docs=1, caseops=False, shard_tokens=10**6, overwrite=False, progress=False)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "d" / "tokenizer.model"))
    assert not any("zqx" in sp.id_to_piece(i) or "xjv" in sp.id_to_piece(i) for i in range(sp.vocab_size()))


def test_refuses_existing_shards_and_overwrite_keeps_other_files(tiny_data, tmp_path):
    d = tmp_path / "d"
    shutil.copytree(tiny_data, d)
    (d / "notes.txt").write_text("mine")
    before = _snapshot(d)
    rc = main(["data", "prepare", "--out", str(d), "--vocab-size", "400", "--val-docs", "5"])
    assert rc == 2 and _snapshot(d) == before
    src = _jsonl(tmp_path / "s.jsonl", embedded_corpus()[:80])
    prepare_data(source=str(src), out_dir=d, vocab_size=400, val_docs=5, caseops=True, shard_tokens=10**6,
                 overwrite=True, progress=False)
    assert (d / "notes.txt").read_text() == "mine" and load_manifest(d)["num_val_docs"] == 5
    assert len(shard_paths(d, "train")) == 1  # the old dir's extra shards are gone, not mixed in
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_failure_leaves_existing_data_untouched(tiny_data, tmp_path):
    d = tmp_path / "d"
    shutil.copytree(tiny_data, d)
    before = _snapshot(d)
    with pytest.raises(DataError, match="not a SentencePiece model"):
        prepare_data(source="embedded", out_dir=d, vocab_size=512, val_docs=5, caseops=True, shard_tokens=10**6,
                     overwrite=True, progress=False, tokenizer=d / "manifest.json")
    assert _snapshot(d) == before and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_given_tokenizer_is_reused(tiny_data, tmp_path):
    src = _jsonl(tmp_path / "s.jsonl", embedded_corpus()[:40])
    m = prepare_data(source=str(src), out_dir=tmp_path / "d", vocab_size=512, val_docs=4, caseops=True,
                     shard_tokens=10**6, overwrite=False, progress=False, tokenizer=tiny_data / "tokenizer.model")
    assert m["tokenizer_sha256"] == load_manifest(tiny_data)["tokenizer_sha256"] and not m["tokenizer_trained"]


@pytest.mark.skipif(not GPL3.exists(), reason="needs Debian's /usr/share/common-licenses/GPL-3")
def test_cli_prepare_a_text_we_did_not_write_then_check(tmp_path, capsys):
    out = tmp_path / "gpl"
    assert main(["data", "prepare", "--source", str(GPL3), "--out", str(out), "--vocab-size", "400",
                 "--val-docs", "10", "--shard-tokens", "4000"]) == 0
    printed = capsys.readouterr().out
    assert "prepared" in printed and "val" in printed
    m = load_manifest(out)
    assert m["source"]["kind"] == "txt" and m["num_val_docs"] == 10 and m["num_train_shards"] >= 2
    assert int(read_shard(shard_paths(out, "val")[0])[0]) == 1
    assert main(["data", "check", str(out)]) == 0
    assert "all 8 checks passed" in capsys.readouterr().out


def test_cli_plain_txt_end_to_end(tmp_path, capsys):
    src = tmp_path / "docs.txt"
    src.write_text("\n\n".join(embedded_corpus()[:60]))
    out = tmp_path / "plain"
    assert main(["data", "prepare", "--source", str(src), "--out", str(out), "--no-caseops", "--vocab-size", "400",
                 "--val-docs", "6"]) == 0
    assert not shard_paths(out, "val_bytes") and load_manifest(out)["byte_source"] == "lut"
    assert main(["data", "check", str(out)]) == 0
    assert "plain SentencePiece" in capsys.readouterr().out


@pytest.mark.parametrize("name,content,message", [
    ("empty.txt", b"", "empty input file"),
    ("latin1.txt", "caf\u00e9 cr\u00e8me".encode("latin-1"), "not valid UTF-8"),
    ("notext.jsonl", b'{"text": "fine"}\n{"title": "no text"}\n', ':2: line has no "text" field'),
])
def test_cli_bad_input_files(tmp_path, capsys, name, content, message):
    src = tmp_path / name
    src.write_bytes(content)
    rc = main(["data", "prepare", "--source", str(src), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc != 0 and err.startswith("pgolf: error: ") and str(src) in err and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_dir_with_shards(tiny_data, capsys):
    rc = main(["data", "prepare", "--out", str(tiny_data)])
    err = capsys.readouterr().err
    assert rc != 0 and f"{tiny_data}: already holds shards; pass --overwrite" in err and "Traceback" not in err


@pytest.mark.parametrize("args,message", [
    (["--val-docs", "0"], "--val-docs must be >= 1"),
    (["--val-docs", "100000"], "leaves no training documents"),
    (["--vocab-size", "70000"], "--vocab-size 70000 is out of range"),
    (["--shard-tokens", "0"], "--shard-tokens must be >= 1"),
])
def test_cli_bad_options(tmp_path, capsys, args, message):
    assert main(["data", "prepare", "--out", str(tmp_path / "o"), *args]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_shards_are_uint16_streams_of_bos_docs(tiny_data):
    val = np.concatenate([np.asarray(read_shard(p)) for p in shard_paths(tiny_data, "val")])
    assert int(val[0]) == 1 and int((val == 1).sum()) == 60 and not (val == 2).any()  # BOS per doc, never EOS
