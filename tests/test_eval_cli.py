"""`pgolf eval` end to end on a tiny run directory (random-init model, real artifact, prepared data).

Checks: the seed's log-line formats, the report.json keys, roundtrip parity with
eval_packed on the loaded artifact, dumps that reproduce the reported bpb,
TTT coverage of every target, the NON-COMPLIANT label of `pr2139` mode, and
one-line errors for a missing run or artifact.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from pgolf.checkpoint import export_record_state_dict, save_model
from pgolf.app.cli import main
from pgolf.config import load_preset
from pgolf.data import load_val
from pgolf.app.verbs import dump_paths, eval_config
from pgolf.evaluate import eval_packed, load_scored_model
from pgolf.model import GPT
from pgolf.quant.artifact import write_artifact
from pgolf.quant.calibrate import collect_hessians
from pgolf.quant.mixed import quantize_state_dict
from pgolf.rundir import RunDir

ARTIFACT_NAME = RunDir(".").artifact.name


def read_report(run) -> dict:
    return RunDir(run).read_report().to_dict()

DIAG = re.compile(r"^diagnostic quantized val_loss:\d+\.\d{8} val_bpb:\d+\.\d{8} eval_time:\d+ms$", re.M)
TTT_LINE = re.compile(r"^quantized_ttt_phased val_loss:\d+\.\d{8} val_bpb:(\d+\.\d{8}) eval_time:\d+ms$", re.M)


@pytest.fixture(scope="module")
def run_dir(tiny_data, tmp_path_factory):
    """A run directory as `train` + `quantize` leave it, built from a random-init tiny model."""
    torch.manual_seed(0)
    cfg = load_preset("tiny", {"eval.val_docs_limit": 6, "ttt.phased_prefix_docs": 3, "ttt.batch_size": 3,
                               "train.compile": "off"})
    run = tmp_path_factory.mktemp("run")
    RunDir(run).write_config(cfg)
    model = GPT(cfg.model)
    model.set_looping(True)
    save_model(run / "final_model.pt", model)
    batches = [torch.randint(0, cfg.model.vocab_size, (2, 64)) for _ in range(2)]
    hessians, act_rms = collect_hessians(model, batches)
    qstate = quantize_state_dict(export_record_state_dict(model), hessians, act_rms, cfg.quant)
    write_artifact(run / ARTIFACT_NAME, qstate, cfg.quant)
    RunDir(run).update_report(data_dir=str(tiny_data))
    return run


def test_eval_roundtrip_scores_the_artifact_once(run_dir, capsys):
    assert main(["eval", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert DIAG.search(out)
    # The EMA weights were scored by train already; eval scores only the model it loads.
    assert "pre-quantization" not in out
    rep = read_report(run_dir)
    for key in ("val_bpb_roundtrip", "target_tokens", "target_bytes"):
        assert key in rep, key
    assert {"eval_load_s", "eval_diagnostic_s"} <= set(rep["phase_seconds"])
    # The verb's number is eval_packed on the artifact as load_eval_model rebuilds it.
    cfg = load_preset("tiny", {"eval.val_docs_limit": 6})
    val = load_val(rep["data_dir"], val_docs_limit=6)
    model, _ = load_scored_model(RunDir(run_dir), RunDir(run_dir).read_config())
    assert rep["val_bpb_roundtrip"] == pytest.approx(eval_packed(model, val, cfg.eval).bpb(), rel=1e-9)
    assert rep["target_tokens"] == val.num_targets
    # int6 GPTQ of a random-init model stays close to it, but is not the same model.
    fp_model, _ = load_scored_model(RunDir(run_dir), RunDir(run_dir).read_config(), prequant=True)
    prequant = eval_packed(fp_model, val, cfg.eval).bpb()
    assert rep["val_bpb_roundtrip"] != prequant
    assert abs(rep["val_bpb_roundtrip"] - prequant) < 0.05 * prequant


def test_dump_nll_reproduces_the_reported_bpb(run_dir, tmp_path):
    prefix = tmp_path / "diag"
    assert main(["eval", str(run_dir), "--dump-nll", str(prefix)]) == 0
    paths = dump_paths(prefix)
    nll, nbytes, pos = (np.load(paths[k]) for k in ("nll", "bytes", "positions"))
    rep = read_report(run_dir)
    assert nll.dtype == np.float32 and nll.shape == nbytes.shape == pos.shape == (rep["target_tokens"],)
    assert pos[0] == 1 and np.all(np.diff(pos) == 1)
    assert float(nll.astype(np.float64).sum() / (math.log(2) * nbytes.sum())) == pytest.approx(
        rep["val_bpb_roundtrip"], rel=1e-5)


def test_ttt_causal_covers_every_target(run_dir, tmp_path, capsys):
    out_dir = tmp_path / "dump"
    out_dir.mkdir()
    assert main(["eval", str(run_dir), "--ttt", "--peer-mode", "causal", "--peer-k", "2",
                 "--dump-nll", str(out_dir)]) == 0
    out = capsys.readouterr().out
    m = TTT_LINE.search(out)
    assert m and DIAG.search(out)
    assert re.search(r"^peer_ens:baseline val_loss:\d+\.\d{6} val_bpb:\d+\.\d{6}$", out, re.M)
    assert re.search(r"^peer_ens:ensemble_covered_only val_loss:\d+\.\d{6} val_bpb:\d+\.\d{6}$", out, re.M)
    assert re.search(r"^total_eval_time:\d+\.\d+s$", out, re.M)
    assert "NON-COMPLIANT" not in out
    assert re.search(r"^ttt_schedule:static virtual_ranks:8$", out, re.M)  # the defaults
    rep = read_report(run_dir)
    assert rep["peer_mode"] == "causal" and rep["peer_compliant"] is True
    assert rep["ttt_schedule"] == "static" and rep["ttt_virtual_ranks"] == 8
    assert rep["coverage_tokens"] == rep["target_tokens"] > 0
    assert 0.0 <= rep["route_fraction"] <= 1.0
    assert float(m.group(1)) == pytest.approx(rep["val_bpb_ttt_ensemble"], abs=1e-8)
    for key in ("val_bpb_ttt", "val_bpb_ttt_ensemble", "val_bpb_roundtrip"):
        assert math.isfinite(rep[key])
    assert {"ttt_eval_s", "ttt_global_sgd_s", "ttt_compile_warmup_s"} <= set(rep["phase_seconds"])
    counts = np.load(out_dir / "score_counts.npy")
    assert counts.shape == (rep["target_tokens"],) and np.all(counts == 1)
    nll, nbytes = np.load(out_dir / "nll.npy"), np.load(out_dir / "bytes.npy")
    assert float(nll.astype(np.float64).sum() / (math.log(2) * nbytes.sum())) == pytest.approx(
        rep["val_bpb_ttt_ensemble"], rel=1e-5)


def test_seed_mode_is_labelled_non_compliant(run_dir, capsys):
    assert main(["eval", str(run_dir), "--ttt", "--peer-mode", "pr2139", "--peer-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "NON-COMPLIANT" in out
    rep = read_report(run_dir)
    assert rep["peer_mode"] == "pr2139" and rep["peer_compliant"] is False
    assert "NON-COMPLIANT" in rep["compliance_note"]


def test_prequant_ttt_never_relabels_the_artifacts_numbers(run_dir, capsys):
    before = read_report(run_dir)
    assert main(["eval", str(run_dir), "--prequant", "--ttt", "--peer-mode", "off"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^prequant_ttt_phased val_loss:\d+\.\d{8} val_bpb:\d+\.\d{8} eval_time:\d+ms$", out, re.M)
    rep = read_report(run_dir)
    assert rep["prequant_ttt"]["peer_mode"] == "off" and math.isfinite(rep["prequant_ttt"]["val_bpb_ttt"])
    for key in ("peer_mode", "val_bpb_ttt", "val_bpb_ttt_ensemble", "val_bpb_roundtrip"):
        assert rep.get(key) == before.get(key), key


def test_missing_run_or_artifact_is_one_line_error(run_dir, tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pgolf: error:") and err.count("\n") == 1 and "nope" in err
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((run_dir / "config.json").read_text())
    (bare / "report.json").write_text(json.dumps({"data_dir": read_report(run_dir)["data_dir"]}))
    assert main(["eval", str(bare)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ARTIFACT_NAME in err


def test_dump_paths_directory_or_prefix(tmp_path):
    assert dump_paths(tmp_path)["nll"] == tmp_path / "nll.npy"
    assert dump_paths(f"{tmp_path}/new/")["bytes"] == tmp_path / "new" / "bytes.npy"
    assert dump_paths(tmp_path / "x.npy")["positions"] == tmp_path / "x.positions.npy"
    assert dump_paths(tmp_path / "x")["nll"] == tmp_path / "x.nll.npy"


def test_eval_config_layers_run_config_sets_and_peer_flags(run_dir):
    from argparse import Namespace

    from pgolf.errors import ConfigError

    args = Namespace(run_dir=str(run_dir), set=["eval.eval_seq_len=64"], peer_mode="pr2139", peer_k=3, env=False)
    cfg = eval_config(args)
    assert cfg.eval.eval_seq_len == 64 and cfg.ttt.peer_mode == "pr2139" and cfg.ttt.peer_k == 3
    assert cfg.eval.val_docs_limit == 6  # from RUN/config.json
    with pytest.raises(ConfigError, match="eval_seq_len"):
        eval_config(Namespace(run_dir=str(run_dir), set=["eval.eval_seq_ln=64"], peer_mode=None, peer_k=None,
                              env=False))
