"""`pgolf quantize`: artifact written, read back from disk, roundtrip bpb close to the float model's."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from pgolf.checkpoint import save_model
from pgolf.config import load_preset
from pgolf.data import load_val
from pgolf.evaluate import eval_packed
from pgolf.model import GPT
from pgolf.quant.artifact import read_header
from pgolf.quant.calibrate import collect_hessians, save_calibration
from pgolf.quantize import quantize_run
from pgolf.rundir import RunDir

ARTIFACT_NAME = RunDir(".").artifact.name
CODE_BYTES = (1000, 100)  # what the caller says it submits; quantize only adds it up


def _quantize(run, compressor=None, **kw):
    cfg = RunDir(run).read_config()
    if compressor:
        cfg = cfg.replace({"quant.compressor": compressor})
    return quantize_run(cfg, RunDir(run), code_bytes=CODE_BYTES, **kw)[0]


def read_report(run) -> dict:
    return RunDir(run).read_report().to_dict()


@pytest.fixture
def trained_run(tmp_path, tiny_data):
    """A run directory as `pgolf train` leaves it: a tiny model with trained-looking (non-zero) weights."""
    cfg = load_preset("tiny")
    torch.manual_seed(1)
    model = GPT(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))  # zero-initialised projections would make GPTQ trivial
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(cfg.to_json())
    save_model(run / "final_model.pt", model)
    g = torch.Generator().manual_seed(2)
    batches = [torch.randint(0, cfg.model.vocab_size, (2, 64), generator=g) for _ in range(2)]
    hessians, act_rms = collect_hessians(model, batches)
    save_calibration(run / "calibration.pt", hessians, act_rms, seconds=0.1)
    val = load_val(tiny_data, include_tail=cfg.eval.include_tail, val_docs_limit=cfg.eval.val_docs_limit,
                   seq_len=cfg.eval.eval_seq_len)
    prequant = eval_packed(model, val, cfg.eval).bpb()
    (run / "report.json").write_text(json.dumps({"data_dir": str(tiny_data), "val_bpb_prequant": prequant}))
    return run, prequant


def test_quantize_roundtrip_from_disk(trained_run):
    run, prequant = trained_run
    fields = _quantize(run)
    art = run / ARTIFACT_NAME
    assert fields["model_bytes"] == os.path.getsize(art)
    assert fields["artifact_bytes"] == fields["model_bytes"] + fields["code_bytes"] == fields["model_bytes"] + 100
    assert read_header(art)["compressor"] == "pergroup"
    # int6/int7 GPTQ on a small random model moves bpb only a little, and never to garbage.
    assert math.isfinite(fields["val_bpb_roundtrip"])
    assert abs(fields["val_bpb_roundtrip"] - prequant) < 0.05 * prequant
    assert fields["quant_bpb_delta"] == pytest.approx(fields["val_bpb_roundtrip"] - prequant)
    rep = read_report(run)
    for key in ("artifact_bytes", "code_bytes", "model_bytes", "val_bpb_roundtrip", "quant_seconds",
                "quant_summary"):
        assert key in rep, key
    assert rep["data_dir"]  # earlier fields survive the merge
    events = [json.loads(line) for line in (run / "train.jsonl").read_text().splitlines()]
    rt = [e for e in events if e["event"] == "roundtrip"]
    assert len(rt) == 1 and rt[0]["val_bpb"] == fields["val_bpb_roundtrip"]


def test_quantize_compressor_override_and_no_eval(trained_run):
    run, _ = trained_run
    fields = _quantize(run, compressor="zstd", evaluate=False)
    assert "val_bpb_roundtrip" not in fields
    hdr = read_header(run / ARTIFACT_NAME)
    assert hdr["compressor"] == "zstd" and [s["name"] for s in hdr["streams"]] == ["tensors"]


def test_cli_quantize_reports_missing_calibration(trained_run, capsys):
    from pgolf.app.cli import main

    run, _ = trained_run
    (run / "calibration.pt").unlink()
    assert main(["quantize", str(run), "--no-eval"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pgolf: error:") and "calibration" in err and "Traceback" not in err
