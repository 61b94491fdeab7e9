"""`pgolf run`'s own logic: the summary table and data-dir reuse (the full run is exercised by test_pack's slow test)."""

import json

from pgolf.app.pipeline import _same_source, summary_table


def test_summary_table_shows_every_stage_and_flags_seed_mode():
    rep = {"val_bpb_prequant": 2.2181, "val_bpb_roundtrip": 2.2214, "val_bpb_ttt": 2.1482,
           "val_bpb_ttt_ensemble": 2.1410, "peer_mode": "causal", "route_fraction": 0.744,
           "coverage_tokens": 25685, "target_tokens": 25685, "artifact_bytes": 614263, "code_bytes": 59006,
           "model_bytes": 555257, "model_params": 1217129, "steps": 167,
           "pipeline_phase_seconds": {"train": 243.9, "eval": 38.2}}
    out = summary_table(rep)
    for text in ("2.21810", "2.22140", "2.14820", "2.14100", "25685/25685", "614,263", "seconds: train", "243.9"):
        assert text in out
    assert "NOT compliant" not in out
    assert "NOT compliant" in summary_table({**rep, "peer_mode": "seed", "peer_compliant": False})
    assert "-" in summary_table({})  # missing figures print as '-', never crash


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
