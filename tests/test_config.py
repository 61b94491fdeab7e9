"""Config: validation names the field, unknown keys name the closest match, presets are data."""

import json

import pytest

from pgolf.config import ConfigError, RunConfig, load_preset, nest, parse_set_args, preset_names


def test_presets_exist_and_validate():
    assert {"record", "seed", "baseline", "cpu", "tiny"} <= set(preset_names())
    for name in preset_names():
        cfg = load_preset(name)
        assert cfg.preset == name
        # Every stage fits the RoPE length (validated on construction, re-checked here).
        assert cfg.train.max_seq_len <= cfg.model.max_seq_len


def test_seed_preset_is_the_logged_configuration():
    s = load_preset("seed")
    assert (s.model.num_layers, s.model.model_dim, s.model.num_heads, s.model.num_kv_heads) == (11, 512, 8, 4)
    assert s.model.qk_gain_init == 5.25 and not s.model.asym_logit_rescale
    assert s.train.seq_len_stages == ((1024, 0.1), (2048, 0.7), (3072, 1.0))
    assert s.train.gptq_reserve_seconds == 4.0
    assert (s.ttt.lora_lr, s.ttt.weight_decay, s.ttt.local_lr_mult) == (1.5e-4, 0.25, 0.75)
    assert (s.ttt.peer_k, s.ttt.peer_conf_threshold, s.ttt.peer_blend_w) == (4, 0.5, 0.8)
    assert s.ttt.lora_sites == ("k", "o", "mlp")
    r = load_preset("record")
    assert r.model.asym_logit_rescale and (r.ttt.lora_lr, r.ttt.weight_decay) == (1e-4, 0.5)
    assert r.diff(s) == ["model.asym_logit_rescale", "preset", "ttt.lora_lr", "ttt.peer_k", "ttt.peer_mode",
                         "ttt.weight_decay"]


@pytest.mark.parametrize("override, field", [
    ({"model.num_heads": 7}, "model.num_heads"),
    ({"model.num_kv_heads": 3}, "model.num_kv_heads"),
    ({"train.seq_len_stages": [[4096, 1.0]]}, "train.seq_len_stages"),
    ({"ttt.peer_mode": "both"}, "ttt.peer_mode"),
    ({"quant.compressor": "gzip"}, "quant.compressor"),
    ({"train.ema_decay": 1.5}, "train.ema_decay"),
    ({"eval.sliding_stride": 4096}, "eval.sliding_stride"),
    ({"eval.val_docs_limit": -1}, "eval.val_docs_limit"),
])
def test_shape_and_value_rules_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_preset("seed", override)


def test_unknown_key_names_closest_match():
    with pytest.raises(ConfigError, match=r"unknown config key train\.matrx_lr.*train\.matrix_lr"):
        load_preset("tiny", {"train.matrx_lr": 0.1})
    with pytest.raises(ConfigError, match="unknown preset 'seeed'.*seed"):
        load_preset("seeed")


def test_json_roundtrip_and_string_coercion():
    cfg = load_preset("tiny", parse_set_args(["train.seed=7", "model.smear_gate=false", "ttt.peer_k=3"]))
    assert cfg.train.seed == 7 and cfg.model.smear_gate is False and cfg.ttt.peer_k == 3
    back = RunConfig.from_dict(json.loads(cfg.to_json()))
    assert back == cfg
    with pytest.raises(ConfigError, match="train.seed"):
        load_preset("tiny", {"train.seed": "seven"})


def test_nest_merges_dotted_and_nested():
    assert nest({"a.b": 1, "a": {"c": 2}}) == {"a": {"b": 1, "c": 2}}


def test_cli_reports_config_errors_in_one_line(capsys, tmp_path):
    from pgolf.app.cli import main

    rc = main(["train", "--data", str(tmp_path), "--preset", "nope", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("pgolf: error: unknown preset") and "Traceback" not in err
