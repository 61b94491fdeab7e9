"""The three layers: the library (`pgolf/`), the app (`pgolf/app/`) and the submission tooling
(`pgolf/submission/`). The library imports nothing above it, and no module imports itself back
through a cycle; both read from the sources, so a lazy import inside a function counts too."""

from __future__ import annotations

from pathlib import Path

import pgolf
from pgolf.submission.pack import imported_modules

PACKAGE = Path(pgolf.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        if rel.name != "__main__":
            out[".".join(parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The pgolf modules a file imports at run time (the packer reads imports the same way)."""
    return imported_modules(path.read_text(), modules)


def _layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ("app", "submission") else "library"


def test_the_library_imports_nothing_above_it():
    modules = _modules()
    bad = [(m, i) for m in modules if _layer(m) == "library" for i in _imports(modules[m], modules)
           if _layer(i) != "library"]
    assert not bad, f"library modules import the app or submission layers: {bad}"


def test_submission_tooling_does_not_import_the_app():
    modules = _modules()
    bad = [(m, i) for m in modules if _layer(m) == "submission" for i in _imports(modules[m], modules)
           if _layer(i) == "app"]
    assert not bad, bad


def test_no_import_cycle():
    modules = _modules()
    graph = {m: _imports(p, modules) - {m} for m, p in modules.items()}
    # a package's __init__ importing its own submodule is not a cycle worth flagging; none do today
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_checks_can_fail(tmp_path, monkeypatch):
    """The import reader sees a lazy import of the app inside a library function."""
    mod = tmp_path / "x.py"
    mod.write_text("def f():\n    from pgolf.app import verbs\n")
    assert "pgolf.app.verbs" in _imports(mod, _modules())
