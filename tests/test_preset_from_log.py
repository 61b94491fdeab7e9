"""`pgolf preset from-log`: a record log's hyperparameter block back into the config that wrote it.

Both spellings roundtrip: pgolf's own packed-record log (`record.seed_log`, dotted
config fields) and a record script's dump (`upstream_records.hyperparameter_dump`,
lower-case knob names through the env-knob mapping). Whatever cannot be mapped is
listed, one line per entry, never dropped.
"""

from __future__ import annotations

import json
import os

import pytest

from pgolf.app.cli import main
from pgolf.app.envknobs import from_hyperparameters
from pgolf.config import RunConfig, load_json, load_preset, resolve
from pgolf.rundir import RunDir
from pgolf.submission.record import seed_log
from upstream_records import hyperparameter_dump, upstream_log


def _from_log(capsys, log, out) -> list[str]:
    assert main(["preset", "from-log", str(log), "--out", str(out)]) == 0
    return capsys.readouterr().out.splitlines()


def test_pgolf_log_roundtrips_the_config(tmp_path, capsys):
    cfg = load_preset("tiny").replace({"train.seed": 7, "train.matrix_lr": 0.0311, "model.num_layers": 5,
                                       "train.seq_len_stages": [[64, 0.5], [128, 1.0]], "ttt.mask": "no_q",
                                       "ttt.short_chunk_steps": [[32, 4]], "quant.compressor": "lzma"})
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.config.write_text(cfg.to_json())
    run.report.write_text(json.dumps({"val_bpb_roundtrip": 3.2}))
    log = tmp_path / "train_seed7.log"
    log.write_text(seed_log(run))
    out = tmp_path / "preset.json"
    lines = _from_log(capsys, log, out)
    back = load_json(out)
    assert back == cfg and back.diff(cfg) == []
    assert "0 cannot be mapped" in lines[0] and back.preset == "tiny"


def test_seed_style_dump_roundtrips_through_the_env_knobs(tmp_path, capsys):
    cfg = resolve("seed", sets=["model.num_layers=9", "model.xsa_last_n=9", "train.matrix_lr=0.021", "ttt.lora_rank=64",
                                "ttt.mask=no_q", "train.seq_len_stages=[[1024, 0.2], [2048, 1.0]]",
                                "ttt.short_chunk_steps=[[128, 8]]", "quant.lqer_rank=2", "train.seed=314",
                                "ttt.peer_seed=314", "ttt.peer_k=3"])
    log = tmp_path / "train_seed314.log"
    log.write_text(upstream_log(314, cfg=cfg))
    out = tmp_path / "seed314.json"
    lines = _from_log(capsys, log, out)
    back = load_json(out)
    assert back.diff(cfg) == [] and back == cfg
    # every entry the mapping has no field for is listed, one line each, with why
    cannot = [t.strip() for t in lines if t.strip().startswith("cannot map ")]
    hp = hyperparameter_dump(cfg, seed=314)
    assert len(cannot) == int(lines[0].split("; ")[1].split()[0])
    named = {t.split()[2].rstrip(":") for t in cannot}
    assert {"run_id", "world_size", "caseops_enabled", "eval_stride", "embed_lr", "datasets_dir"} <= named
    assert named < set(hp) and "num_layers" not in named and "matrix_lr" not in named


def test_values_pgolf_cannot_implement_are_listed_not_dropped(tmp_path, capsys):
    hp = hyperparameter_dump(load_preset("seed"), extra={"tie_embeddings": "False", "new_knob_2027": "5"})
    cfg, unmapped = from_hyperparameters(hp, load_preset("seed"))
    assert cfg == load_preset("seed").replace({"train.seed": int(hp["seed"]), "ttt.peer_seed": int(hp["seed"])})
    assert "tie_embeddings: 'False', but pgolf implements only '1'" in unmapped
    assert "new_knob_2027: not a knob pgolf knows" in unmapped


def test_bad_logs_are_one_line_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "p.json"
    no_block = tmp_path / "a.log"
    no_block.write_text("1/100 train_loss: 3.0\n")
    cut = tmp_path / "b.log"
    cut.write_text("Hyperparameters:\n  num_layers: 11\n  model_dim: 5")
    bad_value = tmp_path / "c.log"
    bad_value.write_text(upstream_log(1, hp_extra={"num_layers": "eleven"}))
    for log, needle in ((no_block, "no hyperparameter block"), (cut, "cut off inside the hyperparameter block"),
                        (bad_value, "NUM_LAYERS='eleven': expected an integer"),
                        (tmp_path / "none.log", "cannot read")):
        assert main(["preset", "from-log", str(log), "--out", str(out)]) == 2
        o, err = capsys.readouterr()
        assert o == "" and err.count("\n") == 1 and needle in err, err
        assert not out.exists()


@pytest.mark.skipif(os.environ.get("PGOLF_SLOW") != "1", reason="trains a few steps (~30 s); set PGOLF_SLOW=1")
def test_train_runs_the_config_from_a_log(tmp_path, tiny_data, capsys):
    cfg = load_preset("tiny").replace({"train.seed": 5, "train.iterations": 2})
    run = RunDir(tmp_path / "src")
    run.path.mkdir()
    run.config.write_text(cfg.to_json())
    run.report.write_text("{}")
    log = tmp_path / "train_seed5.log"
    log.write_text(seed_log(run))
    _from_log(capsys, log, tmp_path / "p.json")
    assert main(["train", "--config", str(tmp_path / "p.json"), "--data", str(tiny_data), "--out",
                 str(tmp_path / "run")]) == 0
    assert RunConfig.from_dict(json.loads((tmp_path / "run" / "config.json").read_text())) == cfg
