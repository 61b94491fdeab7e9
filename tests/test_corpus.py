"""Embedded corpus determinism and the user-file readers' errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pgolf.corpus import corpus_sha256, embedded_corpus, embedded_corpus_sha256, read_source
from pgolf.errors import DataError


def test_embedded_corpus_shape():
    docs = embedded_corpus()
    total_bytes = sum(len(d.encode("utf-8")) for d in docs)
    assert 2000 <= len(docs) <= 3000 and 1_400_000 <= total_bytes <= 2_200_000
    assert len(set(docs)) == len(docs) and all(d == d.strip() and d for d in docs)
    assert embedded_corpus() == docs and embedded_corpus() is not docs  # callers may mutate their copy
    assert embedded_corpus_sha256() == corpus_sha256(docs)


def test_corpus_sha_depends_on_boundaries():
    assert corpus_sha256(["ab", "c"]) != corpus_sha256(["a", "bc"])


def test_same_bytes_in_a_fresh_process_and_nothing_imported():
    code = ("import sys, json; before = set(sys.modules); from pgolf.corpus import embedded_corpus_sha256 as h; "
            "d = h(); new = sorted(set(sys.modules) - before); print(json.dumps([d, new]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""})
    sha, new_modules = json.loads(out.stdout)
    assert sha == embedded_corpus_sha256()
    for unexpected in ("tkinter", "turtle", "antigravity", "this", "idlelib", "smtplib", "asyncio"):
        assert unexpected not in new_modules


def test_read_txt_blank_line_blocks(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("first doc\nline two\n\n\n  second doc  \n \n\nthird\r\n\r\nfourth")
    assert read_source(p) == ["first doc\nline two", "second doc", "third", "fourth"]


def test_read_jsonl(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text("\n".join(json.dumps(o) for o in [{"text": "one", "id": 1}, {"text": "  "}, {"text": " two\n"}]))
    assert read_source(p) == ["one", " two\n"]


@pytest.mark.parametrize("name,content,message", [
    ("e.txt", b"", "empty input file"),
    ("w.txt", b"  \n\n \n", "empty input file"),
    ("b.txt", b"ok\n\xff\xfe broken", "not valid UTF-8 \\(byte offset 3, line 2\\)"),
    ("m.jsonl", b'{"text": "a"}\n{"body": "b"}\n', ':2: line has no "text" field'),
    ("j.jsonl", b'{"text": "a"}\n{oops\n', ":2: not valid JSON"),
    ("n.jsonl", b'{"text": 5}\n', '"text" must be a string'),
    ("s.jsonl", b'{"text": " "}\n', "no non-empty documents"),
    ("x.csv", b"a,b\n", "unsupported source type"),
])
def test_bad_sources(tmp_path, name, content, message):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(DataError, match=message) as e:
        read_source(p)
    assert str(p) in str(e.value)


def test_missing_source(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_source(tmp_path / "missing.txt")
