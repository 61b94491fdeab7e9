"""`pgolf data download` against a local directory laid out like the hub repository (no network here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pgolf.check import PASS, SKIP, check_data
from pgolf.app.cli import main
from pgolf.data import load_manifest, load_val
from pgolf.download import find_variant, VARIANTS, download
from pgolf.errors import DataError
from pgolf.shards import read_shard, shard_paths
from pgolf.tokenizer import file_sha256

CASEOPS_NAME = "sp8192_lossless_caps_caseops_v1_reserved"
TOKENIZER_FILE = "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"


def _fake_hub(root: Path, data_dir: Path, name: str = CASEOPS_NAME, with_bytes: bool = True) -> Path:
    """Lay out `data_dir`'s files the way the published dataset repos are organised."""
    folder = root / "datasets" / "datasets" / f"fineweb10B_{name}"
    folder.mkdir(parents=True)
    kinds = ("train", "val", "val_bytes") if with_bytes else ("train", "val")
    for kind in kinds:
        for p in shard_paths(data_dir, kind):
            shutil.copyfile(p, folder / p.name)
    (root / "datasets" / "tokenizers").mkdir()
    shutil.copyfile(data_dir / "tokenizer.model", root / "datasets" / "tokenizers" / TOKENIZER_FILE)
    manifest = {
        "datasets": [{"name": f"fineweb10B_{name}", "tokenizer_name": "tok",
                      "stats": {"files_train": len(shard_paths(data_dir, "train")),
                                "files_val": len(shard_paths(data_dir, "val"))},
                      **({"val_bytes_glob": "fineweb_val_bytes_*.bin"} if with_bytes else {})}],
        "tokenizers": [{"name": "tok", "model_path": f"tokenizers/{TOKENIZER_FILE}"}],
    }
    (root / "datasets" / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture
def hub(tiny_data, tmp_path):
    return _fake_hub(tmp_path / "hub", tiny_data)


def test_variants_name_the_published_repos():
    assert VARIANTS["sp1024"].repo_id == "willdepueoai/parameter-golf"
    assert VARIANTS["sp8192"].repo_id == "kevclark/parameter-golf"
    assert VARIANTS["sp8192-caseops"].repo_id == "romeerp/parameter-golf-caseops-v1"
    assert VARIANTS["sp8192-caseops"].name == CASEOPS_NAME and VARIANTS["sp8192-caseops"].caseops
    # what the records on each dataset trained with
    assert [VARIANTS[v].train_shards for v in ("sp1024", "sp4096", "sp8192", "sp8192-caseops")] == [80, 128, 128, 80]
    for name in ("sp8192-caseops", CASEOPS_NAME, "fineweb10B_" + CASEOPS_NAME):
        assert find_variant(name) == ("sp8192-caseops", VARIANTS["sp8192-caseops"])


def test_cli_download_then_check_and_load(tiny_data, hub, tmp_path, capsys):
    out = tmp_path / "dl"
    assert main(["data", "download", "--variant", "sp8192-caseops", "--out", str(out), "--train-shards", "2",
                 "--local-hub", str(hub)]) == 0
    assert "pgolf data check" in capsys.readouterr().out
    m = load_manifest(out)
    assert m["tokenizer"] == TOKENIZER_FILE and m["caseops"] and m["num_train_shards"] == 2
    assert [p.name for p in shard_paths(out, "train")] == ["fineweb_train_000000.bin", "fineweb_train_000001.bin"]
    assert m["num_val_docs"] == 60 and m["num_val_tokens"] == load_manifest(tiny_data)["num_val_tokens"]
    assert file_sha256(out / "fineweb_val_bytes_000000.bin") == file_sha256(tiny_data / "fineweb_val_bytes_000000.bin")
    status = {r.name: r.status for r in check_data(out)}
    assert status.pop("sidecar total == UTF-8 bytes") == SKIP  # no source text for downloaded data
    assert set(status.values()) == {PASS}, status
    val = load_val(out)
    assert val.byte_source == "sidecar" and val.target_bytes_total == load_val(tiny_data).target_bytes_total


def test_resume_keeps_intact_files_and_replaces_broken_ones(hub, tmp_path):
    out = tmp_path / "dl"
    download("sp8192-caseops", out, 1, local_hub=hub, progress=False)
    kept = out / "fineweb_val_000000.bin"
    mtime = kept.stat().st_mtime_ns
    broken = out / "fineweb_train_000000.bin"
    broken.write_bytes(broken.read_bytes()[:2000])  # an interrupted copy
    m = download("sp8192-caseops", out, 3, local_hub=hub, progress=False)
    assert kept.stat().st_mtime_ns == mtime and m["num_files_fetched"] == 3  # train 0 again, train 1 and 2
    assert read_shard(broken).size == read_shard(hub / "datasets/datasets" / f"fineweb10B_{CASEOPS_NAME}"
                                                 / broken.name).size
    assert not list(out.glob("*.part"))


def test_plain_variant_without_sidecars(tiny_data, tmp_path):
    # plain layout and tokenizer: reuse a plain prepared dir
    from pgolf.prepare import prepare_data

    src = tmp_path / "s.txt"
    src.write_text("\n\n".join(f"Document number {i} says hello to the world {i % 7} times." for i in range(200)))
    plain = tmp_path / "plain"
    prepare_data(source=str(src), out_dir=plain, vocab_size=300, val_docs=10, caseops=False, shard_tokens=2000,
                 overwrite=False, progress=False)
    hub = _fake_hub(tmp_path / "hub", plain, name="sp1024", with_bytes=False)
    out = tmp_path / "dl"
    m = download("sp1024", out, 1, local_hub=hub, progress=False)
    assert not m["caseops"] and m["byte_source"] == "lut" and not shard_paths(out, "val_bytes")
    assert load_val(out).byte_source == "lut"


def test_hf_code_path_calls_hub_download(hub, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_download(repo_id, filename, repo_type):
        calls.append((repo_id, filename, repo_type))
        return str(hub / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    download("sp8192-caseops", tmp_path / "dl", 1, progress=False)
    assert calls[0] == ("romeerp/parameter-golf-caseops-v1", "datasets/manifest.json", "dataset")
    assert ("romeerp/parameter-golf-caseops-v1", f"datasets/tokenizers/{TOKENIZER_FILE}", "dataset") in calls
    assert (f"datasets/datasets/fineweb10B_{CASEOPS_NAME}/fineweb_val_bytes_000000.bin") in [c[1] for c in calls]

    def offline(**kw):
        raise ConnectionError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda **kw: offline(**kw))
    with pytest.raises(DataError, match="download failed \\(ConnectionError: network unreachable\\)"):
        download("sp1024", tmp_path / "dl2", 1, repo_id="me/mirror", progress=False)


@pytest.mark.parametrize("args,message", [
    (["--variant", "sp2048"], "--variant 'sp2048': choose one of"),
    # the upstream name is accepted, and without --train-shards the variant's records' 80 shards are asked for
    (["--variant", CASEOPS_NAME], "--train-shards 80: fineweb10B_" + CASEOPS_NAME + " has 5 training shards"),
    (["--train-shards", "99"], "--train-shards 99: fineweb10B_" + CASEOPS_NAME + " has 5 training shards"),
    (["--variant", "sp1024"], "no dataset named fineweb10B_sp1024"),
])
def test_cli_bad_requests(hub, tmp_path, capsys, args, message):
    rc = main(["data", "download", "--out", str(tmp_path / "o"), "--local-hub", str(hub), *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err


def test_missing_hub_file_and_foreign_dir(tiny_data, hub, tmp_path, capsys):
    (hub / "datasets/datasets" / f"fineweb10B_{CASEOPS_NAME}" / "fineweb_train_000001.bin").unlink()
    rc = main(["data", "download", "--out", str(tmp_path / "o"), "--local-hub", str(hub), "--train-shards", "2"])
    assert rc == 2 and "fineweb_train_000001.bin: not found in the local hub" in capsys.readouterr().err
    mine = tmp_path / "mine"
    shutil.copytree(tiny_data, mine)
    rc = main(["data", "download", "--out", str(mine), "--local-hub", str(hub), "--train-shards", "1"])
    assert rc == 2 and "already holds other data" in capsys.readouterr().err
    assert load_manifest(mine) == load_manifest(tiny_data)
