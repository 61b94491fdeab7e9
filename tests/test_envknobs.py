"""The seed's environment knobs: mapped, fixed, ignored and misspelled names."""

from __future__ import annotations

import pytest

from pgolf.config import load_preset
from pgolf.app.envknobs import FIXED, IGNORED, MAPPED, SPECIAL, config_from_env, ignored_knobs
from pgolf.errors import ConfigError


@pytest.fixture
def seed_cfg():
    return load_preset("seed")


def test_the_seeds_own_defaults_change_nothing(seed_cfg):
    """The #2139 run command's values are pgolf's seed preset: applying them is a no-op."""
    env = {"NUM_LAYERS": "11", "MODEL_DIM": "512", "NUM_HEADS": "8", "NUM_KV_HEADS": "4", "MLP_MULT": "4.0",
           "VOCAB_SIZE": "8192", "MATRIX_LR": "0.026", "SCALAR_LR": "0.02", "TIED_EMBED_LR": "0.03",
           "MUON_MOMENTUM": "0.97", "MUON_WD": "0.095", "WARMDOWN_FRAC": "0.85", "MIN_LR": "0.1",
           "EMA_DECAY": "0.9965", "TRAIN_BATCH_TOKENS": "786432", "TRAIN_SEQ_LEN": "3072",
           "TRAIN_SEQ_SCHEDULE": "1024@0.100,2048@0.700,3072@1.000", "SEQ_CHANGE_WARMUP_STEPS": "32",
           "GPTQ_RESERVE_SECONDS": "4.0", "QK_GAIN_INIT": "5.25", "TTT_LORA_RANK": "80", "TTT_LORA_LR": "0.00015",
           "TTT_WEIGHT_DECAY": "0.25", "TTT_MASK": "no_qv", "TTT_SHORT_SCORE_FIRST_STEPS": "256:8,2000:24",
           "TTT_PEER_ENSEMBLE_K": "4", "TTT_PEER_CONF_THRESHOLD": "0.5", "TTT_PEER_CONF_BLEND_W": "0.8",
           "PHASED_TTT_NUM_PHASES": "1", "EVAL_INCLUDE_TAIL": "1", "SEED": "42", "TIE_EMBEDDINGS": "1",
           "LQER_ASYM_ENABLED": "1", "SPARSE_ATTN_GATE_INIT_STD": "0", "EVAL_STRIDE": "1536"}
    assert config_from_env(env, seed_cfg).diff(seed_cfg) == []


def test_knobs_land_on_their_fields(seed_cfg):
    env = {"NUM_LAYERS": "9", "XSA_LAST_N": "9", "MATRIX_LR": "0.04", "TRAIN_SEQ_SCHEDULE": "512@0.2,1024@0.5",
           "TTT_LORA_RANK": "16", "TTT_PEER_ENSEMBLE_K": "1", "SEED": "7", "SMEAR_GATE_ENABLED": "0",
           "GPTQ_CALIBRATION_BATCHES": "8", "EVAL_INCLUDE_TAIL": "0", "COMPRESSOR": "Brotli",
           "HOME": "/root", "RANK": "3"}
    cfg = config_from_env(env, seed_cfg)
    assert cfg.model.num_layers == 9 and cfg.model.smear_gate is False
    assert cfg.train.matrix_lr == 0.04 and cfg.train.seed == 7 and cfg.ttt.peer_seed == 7
    # the seed appends (last length, 1.0) when the schedule stops short of 1
    assert cfg.train.seq_len_stages == ((512, 0.2), (1024, 0.5), (1024, 1.0))
    assert cfg.ttt.lora_rank == 16 and cfg.ttt.peer_k == 1
    assert cfg.quant.calibration_batches == 8 and cfg.quant.compressor == "brotli"
    assert cfg.eval.include_tail is False
    assert sorted(cfg.diff(seed_cfg)) == sorted([
        "model.num_layers", "model.xsa_last_n", "model.smear_gate", "train.matrix_lr", "train.seq_len_stages",
        "train.seed", "ttt.peer_seed", "ttt.lora_rank", "ttt.peer_k", "quant.calibration_batches",
        "quant.compressor", "eval.include_tail"])


def test_every_mapped_target_is_a_real_config_field(seed_cfg):
    from pgolf.config import flatten

    fields = set(flatten(seed_cfg.to_dict()))
    for name, (targets, _) in MAPPED.items():
        assert set(targets) <= fields, name
    groups = [set(MAPPED), set(SPECIAL), set(FIXED), set(IGNORED)]
    assert sum(map(len, groups)) == len(set().union(*groups)), "a knob may belong to one class only"


def test_misspelled_knob_names_the_closest_match(seed_cfg):
    with pytest.raises(ConfigError, match=r"TTT_LORA_RANKK .*did you mean TTT_LORA_RANK\?"):
        config_from_env({"TTT_LORA_RANKK": "8"}, seed_cfg)
    with pytest.raises(ConfigError, match=r"did you mean MUON_MOMENTUM_WARMUP_STEPS\?"):
        config_from_env({"MUON_MOMENTUM_WARMUP_STEP": "10"}, seed_cfg)
    with pytest.raises(ConfigError, match="GPTQ_CALIBRATION_BATCHES"):
        config_from_env({"GPTQ_CALIBRATION_BATCH": "8"}, seed_cfg)


def test_fixed_switches_accept_only_the_seeds_value(seed_cfg):
    assert config_from_env({"TIE_EMBEDDINGS": "1", "ROPE_YARN": "0"}, seed_cfg) == seed_cfg
    with pytest.raises(ConfigError, match="TIE_EMBEDDINGS"):
        config_from_env({"TIE_EMBEDDINGS": "0"}, seed_cfg)
    with pytest.raises(ConfigError, match="TRAIN_SEQ_SCHEDULE_MODE"):
        config_from_env({"TRAIN_SEQ_SCHEDULE_MODE": "step"}, seed_cfg)


def test_dead_knobs_are_accepted_and_listed(seed_cfg):
    env = {"EVAL_STRIDE": "64", "ROPE_TRAIN_SEQ_LEN": "4096", "DATA_PATH": "/x", "PATH": "/usr/bin"}
    assert config_from_env(env, seed_cfg) == seed_cfg
    listed = ignored_knobs(env)
    assert [s.split(":")[0] for s in listed] == ["DATA_PATH", "EVAL_STRIDE", "ROPE_TRAIN_SEQ_LEN"]


def test_bad_values_name_the_variable(seed_cfg):
    with pytest.raises(ConfigError, match="NUM_LAYERS='x'"):
        config_from_env({"NUM_LAYERS": "x"}, seed_cfg)
    with pytest.raises(ConfigError, match="SMEAR_GATE_ENABLED"):
        config_from_env({"SMEAR_GATE_ENABLED": "maybe"}, seed_cfg)
    with pytest.raises(ConfigError, match="TRAIN_SEQ_SCHEDULE: stage '1024'"):
        config_from_env({"TRAIN_SEQ_SCHEDULE": "1024"}, seed_cfg)
    with pytest.raises(ConfigError, match="model.num_kv_heads"):  # shape rules still apply
        config_from_env({"NUM_KV_HEADS": "3"}, seed_cfg)


def test_train_seq_len_must_be_the_largest_stage(seed_cfg):
    with pytest.raises(ConfigError, match="TRAIN_SEQ_LEN=2048"):
        config_from_env({"TRAIN_SEQ_LEN": "2048"}, seed_cfg)
    cfg = config_from_env({"TRAIN_SEQ_LEN": "2048", "TRAIN_SEQ_SCHEDULE": ""}, seed_cfg)
    assert cfg.train.seq_len_stages == ((2048, 1.0),)


def test_longer_windows_grow_the_rope_length(seed_cfg):
    cfg = config_from_env({"TRAIN_SEQ_SCHEDULE": "2048@0.5,4096@1.0", "TRAIN_SEQ_LEN": "4096"}, seed_cfg)
    assert cfg.model.max_seq_len == 4096


def test_q_and_v_switches_refine_the_mask(seed_cfg):
    assert config_from_env({"TTT_Q_LORA": "1"}, seed_cfg).ttt.mask == "no_v"
    assert config_from_env({"TTT_MASK": "all", "TTT_V_LORA": "0"}, seed_cfg).ttt.mask == "no_v"
    assert config_from_env({"TTT_MASK": "no_q"}, seed_cfg).ttt.mask == "no_q"
    assert config_from_env({"TTT_MASK": "", "TTT_V_LORA": "0"}, seed_cfg).ttt.mask == "no_v"  # empty = all
    assert config_from_env({"TTT_SHORT_SCORE_FIRST_ENABLED": "0"}, seed_cfg).ttt.short_chunk_steps == ()


def test_schedule_string_is_sorted_and_completed(seed_cfg):
    cfg = config_from_env({"TRAIN_SEQ_SCHEDULE": "2048@0.7, 1024@0.1"}, seed_cfg)
    assert cfg.train.seq_len_stages == ((1024, 0.1), (2048, 0.7), (2048, 1.0))


def test_train_cli_layers_preset_env_set_and_flags(monkeypatch):
    """`pgolf train --env`: preset, then the environment, then --set, then --max-steps/--seed."""
    from pgolf.app.cli import build_parser
    from pgolf.app.verbs import train_config as config_from_args

    monkeypatch.setenv("MATRIX_LR", "0.05")
    monkeypatch.setenv("TTT_LORA_RANK", "6")
    monkeypatch.setenv("ITERATIONS", "99")
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--preset", "tiny", "--env",
                                      "--set", "ttt.lora_rank=5", "--max-steps", "7", "--seed", "3"])
    cfg = config_from_args(args)
    assert cfg.train.matrix_lr == 0.05 and cfg.ttt.lora_rank == 5
    assert cfg.train.iterations == 7 and cfg.train.seed == 3
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--preset", "tiny"])
    assert config_from_args(args) == load_preset("tiny")  # without --env the environment is not read
    monkeypatch.setenv("TTT_LORA_RANKK", "6")
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--preset", "tiny", "--env"])
    with pytest.raises(ConfigError, match="TTT_LORA_RANK"):
        config_from_args(args)
