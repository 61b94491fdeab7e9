"""Artifact container and per-group layout: exact roundtrips, and refusal of damaged files."""

from __future__ import annotations

import os
import re
import struct

import numpy as np
import pytest
import torch

from pgolf.config import QuantConfig
from pgolf.errors import ArtifactError
from pgolf.quant import artifact, pergroup
from pgolf.quant.artifact import read_artifact, read_header, write_artifact


def _qstate(num_layers: int = 2, d: int = 16, hidden: int = 32, vocab: int = 40) -> dict:
    """A QState shaped like the quantizer's output: int8 codes, fp16 scales, packed factors, passthroughs."""
    g = torch.Generator().manual_seed(0)

    def q(rows, cols, r=31):
        return torch.randint(-r, r + 1, (rows, cols), generator=g, dtype=torch.int8)

    t: dict[str, torch.Tensor] = {"tok_emb.weight.q": q(vocab, d, 63),
                                  "tok_emb.weight.scale": torch.rand(vocab, generator=g).half()}
    for i in range(num_layers):
        p = f"blocks.{i}."
        for name, (r, c) in {"attn.c_q": (d, d), "attn.c_k": (d // 2, d), "attn.c_v": (d // 2, d),
                             "attn.proj": (d, d), "mlp.fc": (hidden, d), "mlp.proj": (d, hidden)}.items():
            t[p + name + ".weight.q"] = q(r, c)
            t[p + name + ".weight.scale"] = torch.rand(r, generator=g).half()
        t[p + "attn.attn_gate_w.q"] = q(4, 8, 127)
        t[p + "attn_scale"] = torch.rand(d, generator=g).half()
        t[p + "attn.q_gain"] = torch.rand(4, generator=g)
    t["blocks.1.mlp.fc.weight.lqA_a"] = torch.randint(-2, 2, (hidden, 4), generator=g, dtype=torch.int8)
    t["skip_weights"] = torch.rand(1, d, generator=g).bfloat16()
    t["smear_lambda"] = torch.tensor(0.25)
    t["empty"] = torch.zeros(0, 3)
    t["flag"] = torch.tensor([True, False])
    return {"tensors": t, "meta": {"bits": {"tok_emb.weight": 7}, "lqer": ["blocks.1.mlp.fc.weight"], "v": 1.5}}


def _assert_same(a: dict, b: dict) -> None:
    assert list(a["tensors"]) == list(b["tensors"])
    for name, t in a["tensors"].items():
        u = b["tensors"][name]
        assert u.dtype == t.dtype and u.shape == t.shape, name
        assert torch.equal(u, t), name
    assert a["meta"] == b["meta"]


# --------------------------------------------------------------------------- pergroup
def test_role_of_picks_only_int8_role_matrices():
    i8 = torch.zeros(4, 4, dtype=torch.int8)
    assert pergroup.role_of("blocks.3.mlp.fc.weight.q", i8) == ("mlp.fc", 3, ".q")
    assert pergroup.role_of("tok_emb.weight.q", i8) == ("tok_emb", -1, ".q")
    assert pergroup.role_of("blocks.0.attn.c_k.weight", i8) == ("attn.c_k", 0, "")
    assert pergroup.role_of("blocks.0.attn.c_k.weight.q", i8.half()) is None     # not int8
    assert pergroup.role_of("blocks.0.attn.c_k.weight.scale", i8[0]) is None     # not 2-D
    assert pergroup.role_of("blocks.0.attn.attn_gate_w.q", i8) is None           # not a role
    assert pergroup.role_of("blocks.0.mlp.fc.weight.lqA_a", i8) is None          # LQER factor: remainder
    assert pergroup.role_of("blocks.0.tok_emb.weight", i8) is None


def test_similarity_order_is_a_greedy_l1_chain():
    rows = np.array([[0, 0], [10, 10], [1, 0], [9, 10], [2, 1]], dtype=np.int8)
    order = pergroup.similarity_order_l1(rows)
    assert order.tolist() == [0, 2, 4, 3, 1]
    rng = np.random.default_rng(0)
    big = rng.integers(-31, 32, (50, 7)).astype(np.int8)
    o = pergroup.similarity_order_l1(big)
    assert sorted(o.tolist()) == list(range(50)) and o[0] == 0
    # Each hop is to the nearest row not yet visited.
    for k in range(1, 50):
        left = [j for j in range(50) if j not in set(o[:k].tolist())]
        d = np.abs(big[left].astype(int) - big[o[k - 1]].astype(int)).sum(1)
        assert np.abs(big[o[k]].astype(int) - big[o[k - 1]].astype(int)).sum() == d.min()


def test_pergroup_split_merge_exact():
    qs = _qstate()
    split = pergroup.split_groups(qs["tensors"])
    assert list(split.groups) == ["tok_emb.q", "attn.c_k.q", "attn.c_q.q", "attn.c_v.q", "attn.proj.q",
                                  "mlp.fc.q", "mlp.proj.q"]
    assert "blocks.0.attn.attn_gate_w.q" in split.rest and "tok_emb.weight.scale" in split.rest
    sorted_names = [e["name"] for e in split.layout if e["sorted"]]
    assert sorted_names == ["tok_emb.weight.q", "blocks.0.attn.c_q.weight.q", "blocks.1.attn.c_q.weight.q",
                            "blocks.0.mlp.fc.weight.q", "blocks.1.mlp.fc.weight.q"]
    assert len(split.perms) == 2 * (40 + 16 + 16 + 32 + 32) and split.perm_dtype == "uint16"
    # Group stream = layers in order, each matrix transposed (c_k is unsorted, so checkable directly).
    ck = [qs["tensors"][f"blocks.{i}.attn.c_k.weight.q"] for i in range(2)]
    assert split.groups["attn.c_k.q"] == b"".join(m.numpy().T.tobytes() for m in ck)
    back = pergroup.merge_groups(split)
    assert set(back) == set(qs["tensors"])
    for name, t in qs["tensors"].items():
        assert torch.equal(back[name], t), name


# --------------------------------------------------------------------------- container
@pytest.mark.parametrize("compressor", ["pergroup", "brotli", "lzma", "zstd"])
def test_container_roundtrip(tmp_path, compressor):
    qs = _qstate()
    path = tmp_path / "m.ptz"
    info = write_artifact(path, qs, QuantConfig(compressor=compressor))
    assert info.model_bytes == os.path.getsize(path)
    assert info.model_bytes == sum(info.streams.values()) + info.overhead_bytes
    _assert_same(qs, read_artifact(path))
    hdr = read_header(path)
    assert hdr["format"] == artifact.FORMAT_TAG and hdr["compressor"] == compressor
    assert hdr["quant"]["compressor"] == compressor and hdr["quant"]["matrix_bits"] == 6
    assert not list(tmp_path.glob("*.tmp"))


def test_pergroup_streams_and_loading_never_unpickles(tmp_path, monkeypatch):
    qs = _qstate()
    path = tmp_path / "m.ptz"
    info = write_artifact(path, qs, QuantConfig())
    assert [n for n in info.streams if n.startswith("group:")] == [f"group:{k}" for k in
                                                                  pergroup.split_groups(qs["tensors"]).groups]
    assert {"perms", "rest"} <= set(info.streams)
    import pickle

    def boom(*a, **k):
        raise AssertionError("read_artifact must not unpickle")

    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(torch, "load", boom)
    _assert_same(qs, read_artifact(path))


def _written(tmp_path) -> bytes:
    path = tmp_path / "m.ptz"
    write_artifact(path, _qstate(), QuantConfig(compressor="brotli"))
    return path.read_bytes()


def test_wrong_magic_and_tag_refused(tmp_path):
    data = _written(tmp_path)
    bad = tmp_path / "bad.ptz"
    bad.write_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(ArtifactError, match="not a pgolf artifact"):
        read_artifact(bad)
    n = data[len(artifact.MAGIC)]
    tag_at = len(artifact.MAGIC) + 1
    other = b"pgolf-artifact-v9".ljust(n)[:n]
    bad.write_bytes(data[:tag_at] + other + data[tag_at + n:])
    with pytest.raises(ArtifactError, match="format tag 'pgolf-artifact-v9'"):
        read_artifact(bad)


def test_bad_checksum_refused(tmp_path):
    data = bytearray(_written(tmp_path))
    data[-40] ^= 0xFF  # a byte inside the last stream
    bad = tmp_path / "bad.ptz"
    bad.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        read_artifact(bad)


@pytest.mark.parametrize("cut", [1, 33, 500])
def test_truncated_refused(tmp_path, cut):
    data = _written(tmp_path)
    bad = tmp_path / "bad.ptz"
    bad.write_bytes(data[:-cut])
    with pytest.raises(ArtifactError, match="truncated"):
        read_artifact(bad)
    bad.write_bytes(data[:20])
    with pytest.raises(ArtifactError, match="truncated"):
        read_artifact(bad)


def test_error_messages_are_one_line(tmp_path):
    bad = tmp_path / "bad.ptz"
    bad.write_bytes(artifact.MAGIC + struct.pack("<B", 3) + b"abc")
    with pytest.raises(ArtifactError) as e:
        read_artifact(bad)
    assert "\n" not in str(e.value) and str(bad) in str(e.value)
    with pytest.raises(ArtifactError, match="not found"):
        read_artifact(tmp_path / "missing.ptz")


def test_unknown_compressor_and_unstorable_dtype(tmp_path):
    with pytest.raises(ArtifactError, match="unknown compressor"):
        write_artifact(tmp_path / "x.ptz", _qstate(), {"compressor": "gzip"})
    with pytest.raises(ArtifactError, match="cannot be stored"):
        write_artifact(tmp_path / "x.ptz", {"tensors": {"c": torch.zeros(2, dtype=torch.complex64)}, "meta": {}},
                       QuantConfig(compressor="zstd"))


def test_missing_lrzip_is_reported_with_the_winning_coder(tmp_path, monkeypatch):
    import shutil as _shutil

    from pgolf.quant import codecs

    real_which = _shutil.which
    monkeypatch.setattr(codecs.shutil, "which", lambda name: None if name == "lrzip" else real_which(name))
    info = write_artifact(tmp_path / "m.ptz", _qstate(), QuantConfig())
    assert "lrzip" not in info.coders.values()
    groups = [n for n in info.coders if n.startswith("group:")]
    counts = {c: sum(info.coders[n] == c for n in groups) for c in set(info.coders[n] for n in groups)}
    assert len(info.notes) == 1
    m = re.fullmatch(r"lrzip not found, using (\S+) \(smallest on (\d+) of (\d+) groups\)", info.notes[0])
    assert m is not None, info.notes[0]
    assert counts[m.group(1)] == int(m.group(2)) == max(counts.values()) and int(m.group(3)) == len(groups)
    _assert_same(_qstate(), read_artifact(tmp_path / "m.ptz"))


@pytest.mark.parametrize("seed", range(4))
def test_pergroup_random_layouts_roundtrip(seed, tmp_path):
    """Random layer counts, shapes and missing roles: split/merge and the container stay exact."""
    rng = np.random.default_rng(seed)
    t: dict[str, torch.Tensor] = {}
    for i in range(int(rng.integers(1, 4))):
        for role in pergroup.ROLES[1:]:
            if rng.random() < 0.7:
                shape = tuple(int(x) for x in rng.integers(1, 9, 2))
                t[f"blocks.{i}.{role}.weight.q"] = torch.from_numpy(rng.integers(-128, 128, shape).astype(np.int8))
    t["tok_emb.weight.q"] = torch.from_numpy(rng.integers(-63, 64, (int(rng.integers(1, 20)), 5)).astype(np.int8))
    t["tok_emb.weight.scale"] = torch.from_numpy(rng.random(3).astype(np.float16))
    back = pergroup.merge_groups(pergroup.split_groups(t))
    assert set(back) == set(t) and all(torch.equal(back[n], v) for n, v in t.items())
    qs = {"tensors": t, "meta": {"seed": seed}}
    write_artifact(tmp_path / "m.ptz", qs, QuantConfig())
    _assert_same(qs, read_artifact(tmp_path / "m.ptz"))


def test_malformed_header_refused(tmp_path):
    import brotli

    tag = artifact.FORMAT_TAG.encode()
    header = brotli.compress(b'{"format": "pgolf-artifact-v1", "streams": [{"name": "x"}]}')
    bad = tmp_path / "bad.ptz"
    bad.write_bytes(artifact.MAGIC + struct.pack("<B", len(tag)) + tag + struct.pack("<I", len(header)) + header)
    with pytest.raises(ArtifactError, match="header is malformed"):
        read_artifact(bad)


def test_select_sorting_mixes_groups_exactly():
    qs = _qstate()
    s, p = pergroup.split_groups(qs["tensors"], simsort=True), pergroup.split_groups(qs["tensors"], simsort=False)
    assert pergroup.select_sorting(s, p, set(s.groups)).perms == s.perms
    assert pergroup.select_sorting(s, p, set()).perms == b"" and pergroup.select_sorting(s, p, set()).groups == p.groups
    mixed = pergroup.select_sorting(s, p, {"mlp.fc.q"})
    assert [e["name"] for e in mixed.layout if e["sorted"]] == ["blocks.0.mlp.fc.weight.q", "blocks.1.mlp.fc.weight.q"]
    assert mixed.perms == pergroup.group_perm_bytes(s)["mlp.fc.q"]
    back = pergroup.merge_groups(mixed)
    assert all(torch.equal(back[n], t) for n, t in qs["tensors"].items())


def test_writer_keeps_the_l1_order_only_where_it_pays(tmp_path):
    g = torch.Generator().manual_seed(3)
    protos = torch.randint(-31, 32, (4, 256), generator=g, dtype=torch.int8)
    structured = protos[torch.randint(0, 4, (400,), generator=g)]          # rows repeat: sorting clusters them
    noise = torch.randint(-31, 32, (400, 256), generator=g, dtype=torch.int8)  # nothing to gain, perm costs
    for q, want_sorted in ((structured, True), (noise, False)):
        qs = {"tensors": {"tok_emb.weight.q": q}, "meta": {}}
        write_artifact(tmp_path / "m.ptz", qs, QuantConfig())
        (entry,) = read_header(tmp_path / "m.ptz")["layout"]
        assert entry["sorted"] is want_sorted
        assert torch.equal(read_artifact(tmp_path / "m.ptz")["tensors"]["tok_emb.weight.q"], q)


def test_compress_groups_keeps_the_smallest_coder_per_group():
    from pgolf.quant import codecs

    groups = {"a": bytes(5000), "b": np.random.default_rng(0).integers(-31, 32, 5000).astype(np.int8).tobytes()}
    specs = ["zstd", "brotli", "lzma"]
    coded = pergroup.compress_groups(groups, specs)
    for key, (spec, blob) in coded.items():
        assert len(blob) == min(len(codecs.compress_spec(groups[key], s)) for s in specs)
        assert codecs.decompress_spec(blob, spec) == groups[key]
