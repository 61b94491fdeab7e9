"""pgolf.checkpoint: exact (un)bank roundtrips, weights-only files, record import/export, config checks."""

from __future__ import annotations

import math

import pytest
import torch

from pgolf.checkpoint import (check_state_dict_shapes, export_record_state_dict, import_record_state_dict,
                              load_model, rebank_state_dict, save_model, unbank_state_dict)
from pgolf.train_state import load_train_state, save_train_state
from pgolf.config import load_preset
from pgolf.errors import ArtifactError, ConfigError
from pgolf.model import GPT


def random_model(cfg, seed=0) -> GPT:
    """Random weights everywhere, so a swapped or dropped tensor cannot go unnoticed."""
    m = GPT(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1] if p.ndim else 1))
    return m


def assert_same_state(a: dict, b: dict):
    assert set(a) == set(b)
    for k in a:
        assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.fixture
def cfg(tiny_cfg):
    return load_preset("tiny", {"model.asym_logit_rescale": True}).model


@pytest.fixture
def ids(cfg):
    return torch.randint(2, cfg.vocab_size, (1, 20), generator=torch.Generator().manual_seed(3))


def test_unbank_layout_and_roundtrip(cfg):
    m = random_model(cfg)
    sd = m.state_dict()
    flat = unbank_state_dict(sd, cfg)
    L = cfg.num_layers
    for i in range(L):
        assert torch.equal(flat[f"blocks.{i}.attn.c_q.weight"], sd["qo_bank"][i])
        assert torch.equal(flat[f"blocks.{i}.attn.proj.weight"], sd["qo_bank"][L + i])
        assert torch.equal(flat[f"blocks.{i}.attn.c_k.weight"], sd["kv_bank"][i])
        assert torch.equal(flat[f"blocks.{i}.attn.c_v.weight"], sd["kv_bank"][L + i])
        assert torch.equal(flat[f"blocks.{i}.mlp.fc.weight"], sd["mlp_up_bank"][i])
        assert torch.equal(flat[f"blocks.{i}.mlp.proj.weight"], sd["mlp_down_bank"][i])
    assert not any(k.endswith("_bank") for k in flat)
    assert len(flat) == len(sd) - 4 + 6 * L
    assert_same_state(rebank_state_dict(flat, cfg), sd)
    # Copies, not views: quantizing the export in place must not touch the model.
    flat["blocks.0.attn.c_q.weight"].zero_()
    assert torch.count_nonzero(m.qo_bank[0]) > 0


def test_rebank_rejects_wrong_layer_count(cfg):
    flat = unbank_state_dict(random_model(cfg).state_dict(), cfg)
    del flat[f"blocks.{cfg.num_layers - 1}.mlp.fc.weight"]
    with pytest.raises(ConfigError, match=r"blocks\.3\.mlp\.fc\.weight"):
        rebank_state_dict(flat, cfg)
    more = load_preset("tiny", {"model.num_layers": 6, "model.parallel_start_layer": 5}).model
    with pytest.raises(ConfigError, match="model.num_layers"):
        rebank_state_dict(unbank_state_dict(random_model(cfg).state_dict(), cfg), more)


def test_save_load_model_roundtrip(tmp_path, cfg, ids):
    m = random_model(cfg)
    m.set_looping(True)
    path = tmp_path / "final_model.pt"
    save_model(path, m)
    raw = torch.load(path, weights_only=True)  # loadable without unpickling code
    assert raw["format"] == "pgolf-model" and raw["model_config"]["asym_logit_rescale"] is True
    loaded = load_model(path)
    assert loaded.cfg == cfg and not loaded.looping
    assert_same_state(loaded.state_dict(), m.state_dict())
    loaded.set_looping(True)
    assert torch.equal(loaded(ids), m(ids))
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic write left no temp file


def test_load_model_with_a_compatible_config_uses_it(tmp_path, cfg):
    save_model(tmp_path / "m.pt", random_model(cfg))
    other = load_preset("tiny", {"model.asym_logit_rescale": True, "model.xsa_last_n": 1}).model
    assert load_model(tmp_path / "m.pt", other).cfg == other  # same shapes: accepted


def test_config_mismatch_names_fields(tmp_path, cfg):
    save_model(tmp_path / "m.pt", random_model(cfg))
    wider = load_preset("tiny", {"model.model_dim": 128, "model.num_heads": 8, "model.asym_logit_rescale": True}).model
    with pytest.raises(ConfigError) as e:
        load_model(tmp_path / "m.pt", wider)
    msg = str(e.value)
    assert "model.model_dim (file 64, config 128)" in msg and "model.num_heads (file 4, config 8)" in msg
    assert "\n" not in msg
    sym = load_preset("tiny").model
    with pytest.raises(ConfigError, match="model.asym_logit_rescale"):
        load_model(tmp_path / "m.pt", sym)
    nogate = load_preset("tiny", {"model.asym_logit_rescale": True, "model.skip_gates": False,
                                  "model.vocab_size": 256}).model
    with pytest.raises(ConfigError, match=r"model.vocab_size .*model.skip_gates"):
        load_model(tmp_path / "m.pt", nogate)


def test_record_final_model_loads_and_exports_back(tmp_path, cfg, ids):
    """A #2014/#2139 final_model.pt is the record's banked state dict with tok_emb in bf16."""
    src = random_model(cfg)
    record_sd = {k: (v.bfloat16() if k == "tok_emb.weight" else v.clone()) for k, v in src.state_dict().items()}
    torch.save(record_sd, tmp_path / "final_model.pt")
    with pytest.raises(ConfigError, match="pass one"):
        load_model(tmp_path / "final_model.pt")
    m = load_model(tmp_path / "final_model.pt", load_preset("tiny", {"model.asym_logit_rescale": True}))
    assert m.tok_emb.weight.dtype == torch.float32
    assert torch.equal(m.tok_emb.weight, record_sd["tok_emb.weight"].float())
    # Unbanked record naming (what its quantizer consumes) in, and back out unchanged.
    flat = unbank_state_dict(record_sd, cfg)
    m2 = import_record_state_dict(flat, cfg)
    assert torch.equal(m2(ids), m(ids))
    back = export_record_state_dict(m2)
    flat_fp32 = {k: v.float() for k, v in flat.items()}
    assert_same_state(back, flat_fp32)
    torch.save(back, tmp_path / "unbanked.pt")
    assert_same_state(load_model(tmp_path / "unbanked.pt", cfg).state_dict(), m.state_dict())


def test_import_record_checks_shapes(cfg):
    flat = unbank_state_dict(random_model(cfg).state_dict(), cfg)
    flat["blocks.0.attn.q_gain"] = torch.ones(3)
    with pytest.raises(ConfigError, match=r"model.num_heads \(file 3, config 4\)"):
        import_record_state_dict(flat, cfg)
    flat = unbank_state_dict(random_model(cfg).state_dict(), cfg)
    flat["blocks.2.attn.q_gain"] = torch.ones(3)  # no config field explains this: the tensor is named
    with pytest.raises(ConfigError, match=r"tensors blocks\.2\.attn\.q_gain"):
        import_record_state_dict(flat, cfg)


def test_record_preset_shapes_check_on_meta():
    rec = load_preset("record").model
    with torch.device("meta"):
        sd = GPT(rec).state_dict()
    check_state_dict_shapes(sd, rec, "meta")  # no error
    with pytest.raises(ConfigError, match="model.asym_logit_rescale .file True, config False"):
        check_state_dict_shapes(sd, load_preset("seed").model, "final_model.pt")


def test_train_state_roundtrip(tmp_path):
    state = {
        "step": 12, "elapsed_s": 3.5, "preset": "tiny", "done": False, "best": None,
        "model": {"w": torch.arange(6.0).reshape(2, 3)},
        "optim": {"state": {0: {"exp_avg": torch.ones(2), "step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1}]},
        "rng": {"torch": torch.get_rng_state(), "python": (3, (1, 2, 3), None)},
        "loader": {"cursor": [1, 2], "nested": {"deeper": {"x": "y"}}},
    }
    path = tmp_path / "run" / "checkpoint.pt"
    save_train_state(path, state)
    back = load_train_state(path)
    assert back.keys() == state.keys()
    assert back["step"] == 12 and back["elapsed_s"] == 3.5 and back["preset"] == "tiny" and back["best"] is None
    assert torch.equal(back["model"]["w"], state["model"]["w"])
    assert torch.equal(back["optim"]["state"][0]["exp_avg"], torch.ones(2))
    assert back["optim"]["param_groups"] == [{"lr": 0.1}]
    assert torch.equal(back["rng"]["torch"], state["rng"]["torch"])
    assert back["loader"] == state["loader"]
    torch.load(path, weights_only=True)


def test_train_state_rejects_unloadable_values(tmp_path):
    import numpy as np

    with pytest.raises(TypeError, match=r"state\.rng\.numpy"):
        save_train_state(tmp_path / "s.pt", {"rng": {"numpy": np.zeros(3)}})
    assert not (tmp_path / "s.pt").exists()


def test_bad_files_are_artifact_errors(tmp_path):
    with pytest.raises(ArtifactError, match="no such file"):
        load_train_state(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    for fn in (load_train_state, load_model):
        with pytest.raises(ArtifactError, match="junk.pt"):
            fn(junk)
    torch.save({"step": 1}, tmp_path / "plain.pt")
    with pytest.raises(ArtifactError, match="not a pgolf training state"):
        load_train_state(tmp_path / "plain.pt")
    # A truncated model file (a kill mid-copy) is reported, not unpickled halfway.
    m = tmp_path / "m.pt"
    save_model(m, GPT(load_preset("tiny").model))
    m.write_bytes(m.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="m.pt"):
        load_model(m)
