"""The packer: a self-contained train_gpt.py, size accounting that matches the disk, the record folder."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from pgolf import pack
from pgolf.config import load_preset
from pgolf.errors import ArtifactError
from pgolf.quant.artifact import write_artifact
from pgolf.quantize import ARTIFACT_NAME

SITE_PACKAGES = sysconfig.get_paths()["purelib"]


@pytest.fixture(scope="module")
def tiny_json() -> str:
    return load_preset("tiny").to_json()


@pytest.fixture(scope="module")
def packed(tmp_path_factory, tiny_json) -> Path:
    """train_gpt.py built from the package with the tiny config, alone in an empty folder."""
    d = tmp_path_factory.mktemp("record")
    (d / "train_gpt.py").write_text(pack.build_train_gpt(tiny_json))
    return d / "train_gpt.py"


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> str:
    """A fresh venv that sees the third-party packages but not the editable pgolf.

    Its .pth line adds our site-packages directory to sys.path *without* processing the
    .pth files inside it, so the editable-install finder for pgolf is never installed.
    """
    venv = tmp_path_factory.mktemp("venv") / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "pgolf_deps.pth").write_text(SITE_PACKAGES + "\n")
    return str(py)


def _run(py: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run([py, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=120)


def test_train_gpt_is_a_two_line_shim_that_compiles(packed, tiny_json):
    code = packed.read_text()
    lines = code.split("\n")  # not splitlines(): the text legitimately holds \x0b, \x0c, \x1c-\x1e
    assert len(lines) == 3 and lines[2] == "" and lines[0] in pack._SHIM_IMPORT.values()
    assert code.isascii() and "\x00" not in code and "\r" not in code
    compile(code, "train_gpt.py", "exec")
    raw, counted = pack.packed_code_bytes(tiny_json)
    assert counted == len(code.encode()) == os.path.getsize(packed)
    assert raw > 5 * counted  # minify + compress really shrinks the package


# The counted budget of train_gpt.py. Built with the tiny config it was 58,676 bytes when this bound was set
# (84,546 before: every module, docstrings kept out but locals unrenamed, base85); 60,000 leaves ~2% for the
# package to grow (~5 KB of new source at the ~0.17 counted bytes per raw byte measured) before this test asks
# whether the new code belongs in the packed file. The seed's wrapper was 39,907 bytes with 13,176 of headroom.
PACKED_BUDGET_BYTES = 60_000


def test_packed_file_stays_under_budget(packed):
    assert os.path.getsize(packed) <= PACKED_BUDGET_BYTES, pack.packed_size_table()


def test_text_literal_roundtrips_every_byte():
    for data in (b"", b"\x00", bytes(range(256)) * 3, b"\xff" * 26, os.urandom(1000), b"\x00" * 14):
        lit = pack.to_text_literal(data)
        body = lit[2:-1].encode()
        assert lit.startswith('b"') and lit.endswith('"') and set(body) <= set(pack._ALPHABET)
        assert len(body) == -(-len(data) // 13) * 15  # 15 characters per 13 bytes, no escapes
        d = eval(lit)  # the literal reads back as exactly its characters
        assert d == body
        assert eval(pack.text_literal_decoder("d", len(data)), {"d": d}) == data
    # the shim's digit expression is the rank in the alphabet
    assert [eval(pack._DIGIT_EXPR, {"c": c}) for c in pack._ALPHABET] == list(range(123))


def _pgolf_imports(source: str) -> set[str]:
    """Every pgolf module an import statement in `source` names (`from pgolf import x` counts pgolf.x)."""
    import ast

    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "pgolf"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pgolf":
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_bundle_covers_every_import_of_its_modules():
    """A bundled module imports only bundled modules, or ones a packed file refuses with one line."""
    modules, _, _ = pack.bundled_sources()
    all_modules, _, _ = pack.package_sources()
    assert set(modules) == set(pack.PACKED_MODULES)
    refused = pack.left_out_verbs()
    for name, src in modules.items():
        named = {m for m in _pgolf_imports(src) if m in all_modules}  # `from pgolf.x import func` names no module
        stray = named - set(modules) - set(refused) - {"pgolf.plots"}  # plotting is skipped on ImportError
        assert not stray, f"{name} imports {sorted(stray)}, which the packed file leaves out"
    assert refused["pgolf.prepare"] == "data prepare" and refused["pgolf.significance"] == "significance"
    assert not set(refused) & set(modules)
    # the packed pack.py is the bundle side only, and still compiles on its own
    bundled_pack = modules["pgolf.pack"]
    compile(bundled_pack, "pack.py", "exec")
    assert "def packed_code_bytes" in bundled_pack and "def cmd_size" in bundled_pack
    assert "def build_train_gpt" not in bundled_pack and "_BOOTSTRAP" not in bundled_pack


def test_packed_size_table_adds_up(tiny_json, packed):
    rows = pack.packed_size_rows(tiny_json)
    assert sum(r[3] for r in rows) == os.path.getsize(packed)
    assert [r[0] for r in rows[1:-2]] == list(pack.PACKED_MODULES)
    raw, _ = pack.packed_code_bytes(tiny_json)
    assert sum(r[1] for r in rows) == raw - sum(len(t) for t in (pack.bundled_sources()[2]["pgolf.presets"].values()))
    table = pack.packed_size_table(rows=rows)
    assert f"{os.path.getsize(packed):,}" in table and "pgolf.ttt.score_first" in table
    assert "left out: " in table and "pgolf.significance" in table.split("left out: ")[1]


def test_build_is_deterministic(tiny_json, packed):
    assert pack.build_train_gpt(tiny_json) == packed.read_text()


def test_bare_python_cannot_import_pgolf(bare_python, tmp_path):
    r = _run(bare_python, ["-c", "import torch, brotli, sentencepiece"], tmp_path)
    assert r.returncode == 0, r.stderr
    r = _run(bare_python, ["-c", "import pgolf"], tmp_path)
    assert r.returncode != 0 and "No module named 'pgolf'" in r.stderr


def test_packed_file_is_self_contained(bare_python, packed):
    """Every bundled module imports from the bundle alone; presets load as resources; size is the file's."""
    probe = (
        "import runpy, importlib, sys\n"
        "g = runpy.run_path('train_gpt.py', run_name='bundle')\n"
        "import pgolf, pgolf.config, pgolf.pack\n"
        "for name in sorted(g['M']): importlib.import_module(name)\n"
        "assert pgolf.__spec__.loader.__class__.__name__ == '_F', pgolf.__spec__\n"
        "print(pgolf.config.load_preset('tiny').model.num_layers, ','.join(sorted(g['M'])))\n"
        "print(*pgolf.pack.packed_code_bytes())\n"
        "try:\n    import pgolf.plots\nexcept ModuleNotFoundError as e:\n    print('absent', e.name)\n"
    )
    r = _run(bare_python, ["-c", probe], packed.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    first, second, third = r.stdout.split("\n")[:3]
    assert first.split()[0] == "4" and first.split()[1].split(",") == sorted(pack.PACKED_MODULES)
    assert int(second.split()[1]) == os.path.getsize(packed)
    assert third == "absent pgolf.plots"


def test_packed_cli_parses_run_defaults(bare_python, packed):
    r = _run(bare_python, ["train_gpt.py", "--help"], packed.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage: pgolf run" in r.stdout
    r = _run(bare_python, ["train_gpt.py", "size", str(packed.parent / "nowhere")], packed.parent)
    assert r.returncode == 2 and "pgolf: error:" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("argv,verb", [
    (["data", "check", "d"], "data check"),
    (["significance", "1.0", "--baseline", "1.1"], "significance"),
    (["pack", "run", "--out", "rec"], "pack"),
    ([], "data prepare"),  # the default `run` without ./data would prepare the embedded corpus
])
def test_left_out_verb_is_one_line(bare_python, packed, tmp_path, argv, verb):
    (tmp_path / "train_gpt.py").write_text(packed.read_text())
    r = _run(bare_python, ["train_gpt.py", *argv], tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr == f"pgolf: error: '{verb}' is not part of the packed submission; use the pgolf package\n"


# --------------------------------------------------------------------------- size and pack
def _qstate(n: int) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"tensors": {"tok_emb.weight.q": torch.randint(-63, 64, (n, 64), generator=g, dtype=torch.int8),
                        "tok_emb.weight.scale": torch.rand(n, generator=g).half()},
            "meta": {"format": "test"}}


@pytest.fixture
def run_dir(tmp_path, tiny_json) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(tiny_json + "\n")
    write_artifact(run / ARTIFACT_NAME, _qstate(512), load_preset("tiny").quant)
    (run / "train.jsonl").write_text('{"event": "step", "step": 1}\n')
    (run / "report.json").write_text(json.dumps({
        "val_bpb_prequant": 3.1, "val_bpb_roundtrip": 3.2, "val_loss_roundtrip": 2.2,
        "val_bpb_ttt": 3.0, "val_loss_ttt": 2.05, "val_bpb_ttt_ensemble": 2.9, "peer_compliant": False,
        "peer_mode": "seed", "steps": 30, "date": "2026-11-25"}))
    return run


def test_size_agrees_with_disk(run_dir, tiny_json, capsys):
    assert pack.cmd_size(argparse.Namespace(run_dir=str(run_dir))) == 0
    out = capsys.readouterr().out
    b = pack.size_breakdown(run_dir)
    model = os.path.getsize(run_dir / ARTIFACT_NAME)
    assert b["model_bytes"] == model
    assert b["model_bytes"] == sum(b["streams"].values()) + b["container_overhead_bytes"]
    assert b["code_bytes"] == len(pack.build_train_gpt(tiny_json).encode())
    assert b["artifact_bytes"] == b["code_bytes"] + model
    assert b["headroom_bytes"] == 16_000_000 - b["artifact_bytes"]
    assert f"{model:,}" in out and f"{b['artifact_bytes']:,}" in out and "stream group:tok_emb.q" in out


def test_size_fails_over_a_small_cap(run_dir):
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["quant"]["size_cap_bytes"] = 50_000
    (run_dir / "config.json").write_text(json.dumps(cfg))
    total = pack.size_breakdown(run_dir)["artifact_bytes"]
    with pytest.raises(ArtifactError, match=f"{total:,} bytes > quant.size_cap_bytes 50,000"):
        pack.cmd_size(argparse.Namespace(run_dir=str(run_dir)))
    with pytest.raises(ArtifactError, match="over the size cap"):
        pack.cmd_pack(argparse.Namespace(run_dir=str(run_dir), out=str(run_dir / "record")))
    assert not (run_dir / "record" / "train_gpt.py").exists()
    from pgolf.cli import main

    assert main(["size", str(run_dir)]) == 2  # the CLI: one line, exit 2


def test_size_without_artifact_is_a_clear_error(run_dir):
    (run_dir / ARTIFACT_NAME).unlink()
    with pytest.raises(ArtifactError, match="pgolf quantize"):
        pack.size_breakdown(run_dir)


def test_pack_writes_record_folder(run_dir, tmp_path):
    out = tmp_path / "record"
    assert pack.cmd_pack(argparse.Namespace(run_dir=str(run_dir), out=str(out))) == 0
    names = {p.name for p in out.iterdir()}
    assert {"train_gpt.py", "README.md", "submission.json", "config.json", "train.jsonl", "report.json",
            "requirements.txt"} <= names
    sub = json.loads((out / "submission.json").read_text())
    b = pack.size_breakdown(run_dir)
    assert sub["bytes_code"] == os.path.getsize(out / "train_gpt.py") == b["code_bytes"]
    assert sub["bytes_total"] == b["artifact_bytes"] and sub["bytes_model"] == b["model_bytes"]
    # The seed-mode ensemble is non-compliant, so the headline is own-only TTT.
    assert sub["val_bpb"] == 3.0 and sub["val_loss"] == 2.05
    seed_row = sub["seed_results"][str(load_preset("tiny").train.seed)]
    assert seed_row["val_bpb"] == 3.0 and seed_row["val_bpb_prequant"] == 3.1 and seed_row["val_bpb_ttt_ensemble"] == 2.9
    assert sub["seeds"] == [load_preset("tiny").train.seed] and sub["date"] == "2026-11-25"
    assert {"author", "name", "blurb", "track"} <= set(sub)
    readme = (out / "README.md").read_text()
    assert "not compliant" in readme and f"{b['artifact_bytes']:,}" in readme
    assert "pgolf" not in (out / "requirements.txt").read_text().split()


def test_final_result_order():
    assert pack.final_result({"val_bpb_roundtrip": 1.2}) == ("val_bpb_roundtrip", 1.2)
    assert pack.final_result({"val_bpb_roundtrip": 1.2, "val_bpb_ttt_ensemble": 1.0}) == ("val_bpb_ttt_ensemble", 1.0)
    assert pack.final_result({}) is None


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("PGOLF_SLOW"), reason="slow (about a minute on 2 CPU cores): set PGOLF_SLOW=1")
def test_packed_file_reproduces_the_package(bare_python, tmp_path):
    """Same config, seed and data: `pgolf run` and the packed train_gpt.py (bare venv) agree exactly, TTT included."""
    cfg = load_preset("tiny").replace({"train.iterations": 3})
    assert cfg.ttt.enabled and cfg.ttt.peer_mode == "causal"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = "1"  # identical reductions in both processes
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "cfg.json").write_text(cfg.to_json())
    r = subprocess.run([sys.executable, "-m", "pgolf", "run", "--config", "cfg.json", "--out", "run", "--no-pack"],
                       cwd=pkg, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = tmp_path / "record"
    rec.mkdir()
    (rec / "train_gpt.py").write_text(pack.build_train_gpt(cfg.to_json()))
    # The packed file carries no data preparation: it trains on the package's prepared data dir.
    r = subprocess.run([bare_python, "train_gpt.py", "--data", str(pkg / "run-data")], cwd=rec, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    a = json.loads((pkg / "run" / "report.json").read_text())
    b = json.loads((rec / "run" / "report.json").read_text())
    for key in ("val_bpb", "val_bpb_roundtrip", "val_bpb_ttt", "val_bpb_ttt_ensemble", "model_bytes", "steps",
                "coverage_tokens"):
        assert key in a and a[key] == b[key], key
    assert b["code_bytes"] == os.path.getsize(rec / "train_gpt.py")
    assert (pkg / "run" / ARTIFACT_NAME).read_bytes() == (rec / "run" / ARTIFACT_NAME).read_bytes()
