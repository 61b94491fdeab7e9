"""`pgolf run`'s own logic: the summary table and data-dir reuse (the full run is exercised by test_pack's slow test)."""

import json

from pgolf.app.cli import main
from pgolf.app.pipeline import _same_source
from pgolf.app.summary import summary_table
from pgolf.model import GPT
from pgolf.checkpoint import load_model
from pgolf.rundir import Report, RunDir


def test_summary_table_shows_every_stage_and_flags_seed_mode():
    rep = {"val_bpb_prequant": 2.2181, "val_bpb_roundtrip": 2.2214, "val_bpb_ttt": 2.1482,
           "val_bpb_ttt_ensemble": 2.1410, "peer_mode": "causal", "route_fraction": 0.744,
           "coverage_tokens": 25685, "target_tokens": 25685, "artifact_bytes": 614263, "code_bytes": 59006,
           "model_bytes": 555257, "model_params": 1217129, "steps": 167,
           "pipeline_phase_seconds": {"train": 243.9, "eval": 38.2}}
    out = summary_table(Report.from_dict(rep))
    for text in ("2.21810", "2.22140", "2.14820", "2.14100", "25685/25685", "614,263", "seconds: train", "243.9"):
        assert text in out
    assert "NON-COMPLIANT" not in out and "score (val_bpb_ttt_ensemble)" in out
    flagged = summary_table(Report.from_dict({**rep, "peer_mode": "pr2139", "peer_compliant": False}))
    assert "NON-COMPLIANT" in flagged and "score (val_bpb_ttt)" in flagged
    assert "-" in summary_table(Report())  # missing figures print as '-', never crash


def test_data_dir_is_reused_only_for_the_same_source_and_vocab(tmp_path):
    from pgolf.corpus import embedded_corpus_sha256
    from pgolf.tokenizer import file_sha256

    emb = {"vocab_size": 1024, "source": {"kind": "embedded", "sha256": embedded_corpus_sha256()}}
    assert _same_source(emb, "embedded", 1024)
    assert not _same_source(emb, "embedded", 512)
    txt = tmp_path / "a.txt"
    txt.write_text("one doc\n\nanother doc\n")
    m = {"vocab_size": 1024, "source": {"kind": "txt", "file_sha256": file_sha256(txt)}}
    assert _same_source(m, str(txt), 1024) and not _same_source(emb, str(txt), 1024)
    txt.write_text("changed\n")
    assert not _same_source(m, str(txt), 1024)
    json.dumps(m)  # manifests are plain JSON


def test_run_with_env_trains_what_the_environment_says(tiny_data, tmp_path, monkeypatch):
    """`NUM_LAYERS=5 pgolf run --env` trains 5 layers (tiny has 4): the pipeline resolves the config like every verb."""
    monkeypatch.setenv("NUM_LAYERS", "5")
    run = RunDir(tmp_path / "run")
    rc = main(["run", "--preset", "tiny", "--data", str(tiny_data), "--out", str(run.path), "--env", "--no-pack",
               "--set", "train.iterations=2", "--set", "eval.val_docs_limit=4", "--set", "ttt.enabled=false"])
    assert rc == 0
    assert run.read_config().model.num_layers == 5
    assert load_model(run.final_model).cfg.num_layers == 5
    assert run.read_report().model_params == sum(p.numel() for p in GPT(run.read_config().model).parameters())
