"""The packer: a self-contained train_gpt.py, size accounting that matches the disk, the record folder."""

from __future__ import annotations

import argparse
import codecs
import functools
import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tokenize
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.app import verbs
from pgolf.submission import pack, record
from pgolf.config import load_preset
from pgolf.errors import ArtifactError
from pgolf.quant.artifact import write_artifact
from pgolf.rundir import RunDir

ARTIFACT_NAME = RunDir(".").artifact.name

SITE_PACKAGES = sysconfig.get_paths()["purelib"]


@pytest.fixture(scope="module")
def tiny_json() -> str:
    return load_preset("tiny").to_json()


@pytest.fixture(scope="module")
def packed(tmp_path_factory, tiny_json) -> Path:
    """train_gpt.py built from the package with the tiny config, alone in an empty folder."""
    d = tmp_path_factory.mktemp("record")
    (d / "train_gpt.py").write_bytes(pack.file_bytes(pack.build_train_gpt(tiny_json)))
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


def _literal_span(data: bytes) -> tuple[int, int]:
    """Start and end of the text literal's body in a packed file."""
    start = data.index(b"d='''") + 5
    return start, data.index(b"'''", start)


def test_train_gpt_is_a_latin1_shim_that_compiles(packed, tiny_json):
    data = packed.read_bytes()
    first, second = data.split(b"\n", 2)[:2]
    assert first == b"#coding:l1" and second.split(b";")[0].decode() in pack._SHIM_IMPORT.values()
    with open(packed, "rb") as f:
        assert codecs.lookup(tokenize.detect_encoding(f.readline)[0]).name == "iso8859-1"  # latin-1, as CPython reads it
    start, end = _literal_span(data)
    assert set(data[start:end]) <= set(pack._ALPHABET) and b"\x00" not in data and b"\r" not in data
    # Only the literal is non-ASCII: the code around it reads the same under any ASCII-compatible decoding.
    assert (data[:start] + data[end:]).isascii()
    assert data[end:].startswith(b"'''.encode(\"l1\");t=B.decompress(b\"\".join(")
    assert data.endswith(b").decode();exec(t[:t.find(chr(0))])\n")
    stream_bytes = int(data.rsplit(b")[:", 1)[1].split(b"]")[0])
    full, rest = divmod(stream_bytes, 351)
    assert end - start == full * 352 + pack._group_chars(rest)  # base 252: 1.0028 characters per byte
    code = pack.build_train_gpt(tiny_json)
    assert pack.file_bytes(code) == data and code == data.decode("latin-1")
    compile(data, "train_gpt.py", "exec")  # as bytes: the cookie is honoured
    raw, counted = pack.packed_code_bytes(tiny_json)
    assert counted == len(data) == os.path.getsize(packed)
    assert raw > 5 * counted  # minify + compress really shrinks the package


# The packed file is the library's record-run closure (tiny config embedded): 44,590 bytes when the bundle
# became a package boundary (51,125 with a traced module list and the CLI inside). 45,000 is the issue's
# ceiling; the seed's wrapper was 39,907 bytes, the goal.
# The rule holds for every preset's file; the tests check tiny's (the fixture) and pr2135's (the largest).
PACKED_BUDGET_BYTES = 45_000


def test_packed_file_stays_under_budget(packed):
    assert os.path.getsize(packed) <= PACKED_BUDGET_BYTES, pack.packed_size_table()


def test_pr2135s_packed_file_stays_under_budget():
    """The budget holds for every preset; pr2135 packs the most (its config brings the n-gram tilt along)."""
    config_json = load_preset("pr2135").to_json()
    _, counted = pack.packed_code_bytes(config_json)
    assert counted <= PACKED_BUDGET_BYTES, pack.packed_size_table(config_json)


def test_digit_expression_is_the_rank_in_the_alphabet():
    assert len(pack._ALPHABET) == 252 and not set(b"\x00\r'\\") & set(pack._ALPHABET)
    assert [eval(pack._DIGIT_EXPR, {"c": c}) for c in pack._ALPHABET] == list(range(252))
    assert 252 ** 352 >= 256 ** 351 > 252 ** 351  # 352 characters hold 351 bytes, 351 would not


# Payloads that stress the encoder's groups and, before base 252, the escapes: every byte value, runs of the
# bytes a literal cannot hold raw, trailing backslashes and quotes, CRLF, group edges (350/351/352 bytes),
# all-zero and all-0xff groups (the smallest and largest group values), and random data.
_TRICKY_PAYLOADS = [
    b"", b"\x00", b"\xff", bytes(range(256)), bytes(range(255, -1, -1)) * 3, b"\\", b"abc\\", b"\\" * 351,
    b"'", b"'''", b"'" * 700, b'"""', b"\r\n" * 200, b"\r", b"\n\r", b"\x00" * 351, b"\x00" * 352,
    b"\xff" * 350, b"\xff" * 351, b"\xff" * 352, b"\xff" * 702, b"\x85\x0b\x0c\x1c\x1d\x1e\x1a\xa0" * 50,
    b"# -*- coding: utf-8 -*-\n", bytes(range(256)) * 9 + b"\\", os.urandom(5000), os.urandom(351 * 4 + 17),
]


def _literal_probe(payloads: list[bytes]) -> bytes:
    """A latin-1 source file that decodes each payload exactly as the shim does and prints it in hex."""
    lines = [pack._COOKIE.encode(), b"import sys\n"]
    for data in payloads:
        lit = pack.file_bytes(pack.to_text_literal(data))
        lines.append(b"d=" + lit + b'.encode("l1");sys.stdout.write(' + pack.text_literal_decoder("d", len(data)).encode()
                     + b'.hex()+"\\n")\n')
    return b"".join(lines)


def test_text_literal_roundtrips_tricky_payloads():
    for data in _TRICKY_PAYLOADS:
        lit = pack.to_text_literal(data)
        body = pack.file_bytes(lit)[3:-3]
        assert lit.startswith("'''") and lit.endswith("'''") and set(body) <= set(pack._ALPHABET)
        full, rest = divmod(len(data), 351)
        assert len(body) == full * 352 + pack._group_chars(rest)  # no padding, one extra character a group
        assert eval(compile(pack._COOKIE.encode() + pack.file_bytes(lit), "t", "eval")) == lit[3:-3]  # read back as is
        assert eval(pack.text_literal_decoder("d", len(data)), {"d": body}) == data


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=1500))
def test_text_literal_roundtrips_any_bytes(data):
    src = pack._COOKIE.encode() + b"d=" + pack.file_bytes(pack.to_text_literal(data)) + b'.encode("l1")\n'
    scope: dict = {}
    exec(compile(src, "t.py", "exec"), scope)
    assert eval(pack.text_literal_decoder("d", len(data)), scope) == data


@functools.lru_cache(maxsize=None)
def _interpreters() -> dict[tuple[int, int], str]:
    """CPython 3.10-3.13 found on this machine (this one, PATH, pyenv), by version; broken shims are dropped."""
    found: dict[tuple[int, int], str] = {sys.version_info[:2]: sys.executable}
    candidates = [shutil.which(f"python3.{m}") for m in range(10, 14)]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[0-3].*/bin/python3")))
    for exe in filter(None, candidates):
        r = subprocess.run([exe, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True, text=True)
        if r.returncode == 0:
            found.setdefault(tuple(int(v) for v in r.stdout.split()), exe)
    return found


@pytest.mark.parametrize("minor", [10, 11, 12, 13])
def test_text_literal_reads_back_on_every_supported_python(minor, tmp_path):
    """The tokenizer of each CPython reads the latin-1 literal bit-exactly, from a file and from bytes."""
    exe = _interpreters().get((3, minor))
    if exe is None:
        pytest.skip(f"no python3.{minor} on this machine")
    payloads = _TRICKY_PAYLOADS + [bytes([b]) * n for b in (0, 10, 13, 39, 92, 255) for n in (1, 2, 3, 351)]
    (tmp_path / "probe.py").write_bytes(_literal_probe(payloads))
    want = "".join(d.hex() + "\n" for d in payloads)
    for argv in (["probe.py"], ["-c", "exec(compile(open('probe.py','rb').read(),'probe.py','exec'))"]):
        r = _run(exe, argv, tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout == want


def _pgolf_imports(source: str) -> set[str]:
    """Every pgolf module an import statement in `source` names (`from pgolf import x` counts pgolf.x), except
    under `if TYPE_CHECKING:` (never executed)."""
    import ast

    tree = ast.parse(source)
    type_only = [n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING"]
    tree.body = [n for n in tree.body if n not in type_only]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "pgolf"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pgolf":
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_bundle_is_the_entrys_import_closure():
    """Every pgolf import of a bundled module is bundled; app/, submission/ and data tooling stay out."""
    sources = pack.package_sources()
    bundled = pack.bundled_modules(sources)
    assert pack.ENTRY in bundled and "pgolf.record_run" in bundled and "pgolf.train" in bundled
    for name in bundled:
        stray = {m for m in _pgolf_imports(sources[name]) if m in sources} - set(bundled)
        assert not stray, f"{name} imports {sorted(stray)}, which the packed file leaves out"
    for left_out in ("pgolf.app.cli", "pgolf.app.verbs", "pgolf.app.pipeline", "pgolf.app.envknobs",
                     "pgolf.app.plots", "pgolf.submission.pack", "pgolf.submission.audit", "pgolf.prepare",
                     "pgolf.check", "pgolf.download", "pgolf.corpus", "pgolf.encoding", "pgolf.caseops"):
        assert left_out in sources and left_out not in bundled, left_out
    app_modules = [m for m in bundled if m.startswith("pgolf.app.")]
    assert app_modules == ["pgolf.app.record_main"], app_modules
    assert not [m for m in bundled if m.startswith("pgolf.submission")]


@pytest.mark.parametrize("mode", ["off", "causal", "pr2139"])
def test_a_packed_file_carries_its_own_peer_mode_only(mode):
    """The TTT peer modes are imported by name, so the bundle holds the configured one and no other."""
    from pgolf.config import RunConfig, TTTConfig
    from pgolf.ttt.peer_modes import PEER_MODES

    bundled = pack.bundled_modules(config_json=RunConfig(ttt=TTTConfig(peer_mode=mode)).to_json())
    modules = {m: ref.split(":")[0] for m, ref in PEER_MODES.items()}
    assert modules[mode] in bundled
    assert not {modules[m] for m in modules if m != mode} & set(bundled)
    # the mode's own imports come along; without peers the blend (ensemble) is left out
    assert ("pgolf.ttt.ensemble" in bundled) == (mode != "off")


@pytest.mark.parametrize("order", ["off", "causal", "stream"])
def test_a_packed_file_carries_the_ngram_order_it_runs(order):
    """The tilt is bundled when it is on; #2135's stream order (`pgolf.ngram_orders`) only when it is chosen."""
    from pgolf.config import RunConfig

    cfg = RunConfig().replace({"eval.ngram_tilt": order, "ttt.peer_mode": "off"})
    bundled = set(pack.bundled_modules(config_json=cfg.to_json()))
    assert ("pgolf.ngram_tilt" in bundled) == (order != "off")
    assert ("pgolf.ngram_orders" in bundled) == (order == "stream")


def test_packed_size_table_adds_up(tiny_json, packed):
    rows = pack.packed_size_rows(tiny_json)
    assert sum(r[3] for r in rows) == os.path.getsize(packed)
    assert [r[0] for r in rows[1:-1]] == pack.bundled_modules(config_json=tiny_json)
    raw, _ = pack.packed_code_bytes(tiny_json)
    assert sum(r[1] for r in rows) == raw
    table = pack.packed_size_table(rows=rows)
    assert f"{os.path.getsize(packed):,}" in table and "pgolf.ttt.score_first" in table
    assert "left out: " in table and "pgolf.submission.significance" in table.split("left out: ")[1]


def test_build_is_deterministic(tiny_json, packed):
    assert pack.file_bytes(pack.build_train_gpt(tiny_json)) == packed.read_bytes()


def test_bare_python_cannot_import_pgolf(bare_python, tmp_path):
    r = _run(bare_python, ["-c", "import torch, brotli, sentencepiece"], tmp_path)
    assert r.returncode == 0, r.stderr
    r = _run(bare_python, ["-c", "import pgolf"], tmp_path)
    assert r.returncode != 0 and "No module named 'pgolf'" in r.stderr


def test_packed_file_is_self_contained(bare_python, packed, tiny_json):
    """Every bundled module imports from the bundle alone; what it leaves out is not importable."""
    probe = (
        "import runpy, importlib, sys\n"
        "g = runpy.run_path('train_gpt.py', run_name='bundle')\n"
        "import pgolf, pgolf.config\n"
        "for name in sorted(g['M']): importlib.import_module(name)\n"
        "assert pgolf.__spec__.loader.__class__.__name__ == '_F', pgolf.__spec__\n"
        "print(','.join(sorted(g['M'])))\n"
        "try:\n    import pgolf.app.plots\nexcept ModuleNotFoundError as e:\n    print('absent', e.name)\n"
    )
    r = _run(bare_python, ["-c", probe], packed.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    first, second = r.stdout.split("\n")[:2]
    assert first.split(",") == pack.bundled_modules(config_json=tiny_json)
    assert second == "absent pgolf.app.plots"


def test_packed_file_takes_the_record_options_only(bare_python, packed, tmp_path):
    (tmp_path / "train_gpt.py").write_bytes(packed.read_bytes())
    r = _run(bare_python, ["train_gpt.py", "--help"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage: train_gpt.py" in r.stdout and "--seed" in r.stdout and "--set" in r.stdout
    r = _run(bare_python, ["train_gpt.py", "--data", "nowhere"], tmp_path)
    assert r.returncode == 2 and r.stderr == ("pgolf: error: nowhere: data directory not found (prepare it with "
                                              "pgolf, or pass --data DIR)\n")
    r = _run(bare_python, ["train_gpt.py", "data", "check", "d"], tmp_path)  # verbs belong to the package
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr and "Traceback" not in r.stderr


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
        "peer_mode": "pr2139", "steps": 30, "date": "2026-11-25"}))
    return run


def _pack_args(runs, out, **who) -> argparse.Namespace:
    return argparse.Namespace(run_dirs=[str(r) for r in runs], out=str(out), submitter=None,
                              track=who.pop("track", None), baseline=who.pop("baseline", None),
                              **{k: who.get(k) for k in ("author", "github_id", "name")})


def test_size_agrees_with_disk(run_dir, tiny_json, capsys):
    assert verbs.cmd_size(argparse.Namespace(run_dir=str(run_dir))) == 0
    out = capsys.readouterr().out
    b = pack.size_breakdown(run_dir)
    model = os.path.getsize(run_dir / ARTIFACT_NAME)
    assert b["model_bytes"] == model
    assert b["model_bytes"] == sum(b["streams"].values()) + b["container_overhead_bytes"]
    assert b["code_bytes"] == len(pack.file_bytes(pack.build_train_gpt(tiny_json)))
    assert b["artifact_bytes"] == b["code_bytes"] + model
    assert b["headroom_bytes"] == 16_000_000 - b["artifact_bytes"]
    assert f"{model:,}" in out and f"{b['artifact_bytes']:,}" in out and "stream group:tok_emb.q" in out


def test_size_fails_over_a_small_cap(run_dir):
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["quant"]["size_cap_bytes"] = 50_000
    (run_dir / "config.json").write_text(json.dumps(cfg))
    total = pack.size_breakdown(run_dir)["artifact_bytes"]
    with pytest.raises(ArtifactError, match=f"{total:,} bytes > quant.size_cap_bytes 50,000"):
        verbs.cmd_size(argparse.Namespace(run_dir=str(run_dir)))
    with pytest.raises(ArtifactError, match="over the size cap"):
        verbs.cmd_pack(_pack_args([run_dir], run_dir / "record"))
    assert not (run_dir / "record" / "train_gpt.py").exists()
    from pgolf.app.cli import main

    assert main(["size", str(run_dir)]) == 2  # the CLI: one line, exit 2


def test_size_without_artifact_is_a_clear_error(run_dir):
    (run_dir / ARTIFACT_NAME).unlink()
    with pytest.raises(ArtifactError, match="pgolf quantize"):
        pack.size_breakdown(run_dir)


def test_pack_writes_record_folder(run_dir, tmp_path):
    out = tmp_path / "record"
    assert verbs.cmd_pack(_pack_args([run_dir], out)) == 0
    names = {p.name for p in out.iterdir()}
    assert {"train_gpt.py", "README.md", "submission.json", "config.json", "train.jsonl", "report.json",
            "requirements.txt"} <= names
    sub = json.loads((out / "submission.json").read_text())
    b = pack.size_breakdown(run_dir)
    assert sub["bytes_code"] == os.path.getsize(out / "train_gpt.py") == b["code_bytes"]
    assert sub["bytes_total"] == b["artifact_bytes"] and sub["bytes_model"] == b["model_bytes"]
    # The pr2139-mode ensemble is non-compliant, so the headline is own-only TTT.
    assert sub["val_bpb"] == 3.0 and sub["val_loss"] == 2.05
    seed_row = sub["seed_results"][str(load_preset("tiny").train.seed)]
    assert seed_row["val_bpb"] == 3.0 and seed_row["val_bpb_prequant"] == 3.1 and seed_row["val_bpb_ttt_ensemble"] == 2.9
    assert sub["seeds"] == [load_preset("tiny").train.seed] and sub["date"] == "2026-11-25"
    assert {"author", "name", "blurb", "track"} <= set(sub)
    readme = (out / "README.md").read_text()
    assert "not compliant" in readme and f"{b['artifact_bytes']:,}" in readme
    assert "pgolf" not in (out / "requirements.txt").read_text().split()


def test_final_result_order():
    assert record.final_result({"val_bpb_roundtrip": 1.2}) == ("val_bpb_roundtrip", 1.2)
    assert record.final_result({"val_bpb_roundtrip": 1.2, "val_bpb_ttt_ensemble": 1.0}) == ("val_bpb_ttt_ensemble", 1.0)
    assert record.final_result({}) is None


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
    (rec / "train_gpt.py").write_bytes(pack.file_bytes(pack.build_train_gpt(cfg.to_json())))
    # The packed file carries no data preparation: it trains on the package's prepared data dir.
    r = subprocess.run([bare_python, "train_gpt.py", "--data", str(pkg / "run-data")], cwd=rec, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    a = json.loads((pkg / "run" / "report.json").read_text())
    b = json.loads((rec / "run" / "report.json").read_text())
    for key in ("val_bpb_prequant", "val_bpb_roundtrip", "val_bpb_ttt", "val_bpb_ttt_ensemble", "model_bytes", "steps",
                "coverage_tokens"):
        assert key in a and a[key] == b[key], key
    assert b["code_bytes"] == os.path.getsize(rec / "train_gpt.py")
    assert (pkg / "run" / ARTIFACT_NAME).read_bytes() == (rec / "run" / ARTIFACT_NAME).read_bytes()


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("PGOLF_SLOW"), reason="slow (two tiny runs, ~1 min on 2 CPU cores): set PGOLF_SLOW=1")
def test_two_seeds_make_one_record_the_audit_passes(tiny_data, tmp_path):
    from pgolf.app.cli import main
    from pgolf.submission.audit import FAIL, audit_paths

    runs = []
    for seed in (1, 2):
        run = tmp_path / f"seed{seed}"
        assert main(["run", "--preset", "tiny", "--data", str(tiny_data), "--out", str(run), "--no-pack",
                     "--seed", str(seed), "--set", "train.iterations=2", "--set", "eval.val_docs_limit=6"]) == 0
        runs.append(run)
    out = tmp_path / "records" / "track_non_record_16mb" / "2026-12-01_Tiny"
    assert verbs.cmd_pack(_pack_args(runs, out, author="A. Golfer", github_id="agolfer")) == 0
    names = {p.name for p in out.iterdir()}
    assert {"train_gpt.py", "submission.json", "README.md", "train_seed1.log", "train_seed2.log", "seed1",
            "seed2"} <= names
    sub = json.loads((out / "submission.json").read_text())
    reports = [json.loads((r / "report.json").read_text()) for r in runs]
    scores = [record.final_result(r)[1] for r in reports]
    assert sub["seeds"] == [1, 2] and sub["author"] == "A. Golfer" and sub["github_id"] == "agolfer"
    assert sub["val_bpb"] == pytest.approx(sum(scores) / 2, abs=1e-12)
    assert sub["val_bpb_std"] == pytest.approx(abs(scores[0] - scores[1]) / 2 ** 0.5, abs=1e-12)
    assert sub["compliance"]["ensemble_compliant"] and sub["compliance"]["every_target_scored_once"]
    log = (out / "train_seed2.log").read_text()
    assert "seed: 2" in log and "model.num_layers: 4" in log and "step:2/2 train_loss:" in log
    checks = audit_paths([out])
    assert not [c for c in checks if c.status == FAIL], [c for c in checks if c.status == FAIL]
    assert [c.status for c in checks if c.name == "consistency.seed_logs"] == ["PASS"]
    assert main(["audit", str(out)]) == 0
    # a run of another configuration is refused, naming the field
    other = tmp_path / "other"
    shutil.copytree(runs[1], other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["train"]["matrix_lr"] = 0.05
    cfg["train"]["seed"] = 3
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="config differs .* in train.matrix_lr"):
        verbs.cmd_pack(_pack_args([runs[0], other], tmp_path / "refused"))
    assert not (tmp_path / "refused").exists()


# --------------------------------------------------------------------------- tracks and a named baseline
def _second_seed(run_dir: Path, seed: int, bpb: float) -> Path:
    other = run_dir.parent / f"seed{seed}"
    shutil.copytree(run_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["train"]["seed"] = seed
    cfg["ttt"]["peer_seed"] = seed
    (other / "config.json").write_text(json.dumps(cfg))
    rep = json.loads((other / "report.json").read_text())
    rep["val_bpb_ttt"] = bpb
    (other / "report.json").write_text(json.dumps(rep))
    return other


def test_pack_track_label_and_baseline_comparison(run_dir, tmp_path, capsys):
    from pgolf.app.cli import main

    other = _second_seed(run_dir, 99, 3.01)
    out = tmp_path / "rec"
    assert main(["pack", str(run_dir), str(other), "--out", str(out), "--track", "non_record_unlimited",
                 "--baseline", "3.2", "3.25", "3.22"]) == 0
    printed = capsys.readouterr().out
    sub = json.loads((out / "submission.json").read_text())
    assert sub["track"] == "non-record-unlimited-compute-16mb"
    assert "records/track_non_record_16mb/" in printed and "track: non_record_unlimited" in printed
    c = sub["comparison"]
    assert c["baseline_val_bpb"] == pytest.approx(3.22333333333, rel=1e-9)
    assert c["delta_bpb"] == pytest.approx(3.005 - c["baseline_val_bpb"], abs=1e-12)
    assert c["delta_nats"] < 0 and 0 <= c["p_value"] < 0.05 and c["p_value_bar"] >= c["p_value"]
    assert "0.005 nats" in c["bar"] and "Welch" in c["test"] and "paired" in c["maintainers_test"]
    assert "nats" in printed and "p=" in printed
    assert "## Against the baseline" in (out / "README.md").read_text()
    # without --track the config decides (a 16 MB cap with a 600 s clock is the record track)
    assert main(["pack", str(run_dir), "--out", str(tmp_path / "one")]) == 0
    guessed = json.loads((tmp_path / "one" / "submission.json").read_text())["track"]
    tiny = load_preset("tiny")
    from pgolf.submission.tracks import guess_track

    assert guessed == guess_track(tiny.quant.size_cap_bytes, tiny.train.max_wallclock_seconds).label


def test_pack_refuses_bad_input_and_writes_nothing(run_dir, tmp_path, capsys):
    from pgolf.app.cli import main

    other = _second_seed(run_dir, 99, 3.01)
    rep = json.loads((other / "report.json").read_text())
    rep["code_raw_bytes"] = 123_456
    (other / "report.json").write_text(json.dumps(rep))
    out = tmp_path / "rec"
    assert main(["pack", str(run_dir), str(other), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "quantized with other code" in err and err.count("\n") == 1 and not out.exists()
    assert main(["pack", str(run_dir), "--out", str(out), "--baseline", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and err.count("\n") == 1 and not out.exists()


def test_pack_track_from_the_records_folder_and_mismatch_refused(run_dir, tmp_path, capsys):
    from pgolf.app.cli import main

    out = tmp_path / "records" / "track_non_record_16mb" / "2026-12-01_Tiny"
    assert main(["pack", str(run_dir), "--out", str(out)]) == 0
    assert json.loads((out / "submission.json").read_text())["track"] == "non_record_16mb"
    other = tmp_path / "records" / "track_10min_16mb" / "2026-12-01_Tiny"
    assert main(["pack", str(run_dir), "--out", str(other), "--track", "non_record_16mb"]) == 2
    err = capsys.readouterr().err
    assert "--track non_record_16mb belongs in records/track_non_record_16mb/" in err and not other.exists()
