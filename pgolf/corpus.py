"""Document sources: the embedded corpus and user files.

The embedded corpus is English prose that ships with every Python install, so
`pgolf data prepare` works offline on any machine: the docstrings (longer than
200 characters) of the stdlib's modules, classes and functions, read with
`ast` from the source files (nothing is imported, so no module code runs),
followed by the `pydoc_data.topics` help texts. Files are visited in sorted
order and duplicates are dropped (first occurrence wins), which makes the list
a pure function of the stdlib sources: the same bytes on every machine with
the same Python minor version. Test suites, IDLE, demos and site-packages are
left out. The result is cached in memory for the process.

User files: `.jsonl` is one JSON object with a string "text" per line; `.txt`
is one document per block of text separated by blank lines. Documents with
no visible character (empty, whitespace, control characters) are dropped: the
tokenizer's normalizer erases them, and a lone BOS cannot carry their bytes.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import sys
import sysconfig
import unicodedata
from functools import lru_cache
from pathlib import Path

from pgolf.errors import DataError

MIN_DOCSTRING_CHARS = 200
# Directory names skipped anywhere under the stdlib: tests and bundled apps are
# not prose, and site-packages depends on what the user installed.
_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "idlelib", "turtledemo", "ensurepip",
                        "site-packages", "dist-packages", "__pycache__"})
_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _stdlib_sources() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for p in root.rglob("*.py"):
        parts = p.relative_to(root).parts
        # config-3.x-<platform> holds build scripts whose name differs per machine
        if _SKIP_DIRS.intersection(parts[:-1]) or parts[0].startswith("config-"):
            continue
        files.append(p)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _doc_nodes(node: ast.AST):
    """Module, class and function nodes in source order, walking statements only (docstrings live nowhere else)."""
    if isinstance(node, _DOC_NODES):
        yield node
    for name in ("body", "orelse", "finalbody", "handlers", "cases"):
        for child in getattr(node, name, None) or ():
            if isinstance(child, ast.AST):
                yield from _doc_nodes(child)


def _docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):
        return []  # a stdlib file this Python cannot parse carries no prose for us
    docs = []
    for node in _doc_nodes(tree):
        doc = ast.get_docstring(node, clean=True)
        if doc and len(doc) > MIN_DOCSTRING_CHARS:
            docs.append(doc)
    return docs


@lru_cache(maxsize=1)
def _embedded() -> tuple[str, ...]:
    from pydoc_data import topics  # plain data module: a dict of help texts

    docs: list[str] = []
    for path in _stdlib_sources():
        docs.extend(_docstrings(path))
    docs.extend(topics.topics[k] for k in sorted(topics.topics))
    docs = [d.strip() for d in docs]
    return tuple(dict.fromkeys(d for d in docs if has_text(d)))


def embedded_corpus() -> list[str]:
    """The embedded corpus: ~2,300 stdlib docstrings and help topics (~1.7 MB), deterministic."""
    return list(_embedded())


def corpus_sha256(docs: list[str]) -> str:
    """SHA-256 of a document list (length-prefixed UTF-8, so boundaries count)."""
    h = hashlib.sha256()
    for d in docs:
        raw = d.encode("utf-8")
        h.update(len(raw).to_bytes(8, "little"))
        h.update(raw)
    return h.hexdigest()


@lru_cache(maxsize=1)
def embedded_corpus_sha256() -> str:
    return corpus_sha256(embedded_corpus())


def has_text(doc: str) -> bool:
    """True if `doc` has a character the tokenizer keeps (not whitespace, not a control/format character)."""
    return any(not ch.isspace() and unicodedata.category(ch)[0] != "C" for ch in doc)


def python_minor() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if not raw.strip():
        raise DataError(f"{path}: empty input file (no documents)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{path}: not valid UTF-8 (byte offset {e.start}, line {line})") from None


def _read_jsonl(path: Path, text: str) -> list[str]:
    docs = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or "text" not in obj:
            raise DataError(f"{path}:{lineno}: line has no \"text\" field")
        if not isinstance(obj["text"], str):
            raise DataError(f"{path}:{lineno}: \"text\" must be a string, got {type(obj['text']).__name__}")
        if has_text(obj["text"]):
            docs.append(obj["text"])
    return docs


def read_source(path: str | Path) -> list[str]:
    """Documents of a `.jsonl` or `.txt` file (DataError on empty, non-UTF-8 or malformed input)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".txt", ""):
        raise DataError(f"{path}: unsupported source type {suffix!r}; use .jsonl, .txt or 'embedded'")
    text = _read_text(path)
    if suffix == ".jsonl":
        docs = _read_jsonl(path, text)
    else:
        # A suffix-less file (e.g. /usr/share/common-licenses/GPL-3) is read as plain text.
        docs = [d.strip() for d in re.split(r"\n[ \t\r\f\v]*\n", text.replace("\r\n", "\n"))]
        docs = [d for d in docs if has_text(d)]
    if not docs:
        raise DataError(f"{path}: no non-empty documents")
    return docs
