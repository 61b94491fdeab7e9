"""`pgolf quantize RUN_DIR`: trained weights -> compressed artifact -> read back -> roundtrip bpb.

The roundtrip is mandatory (style-anchors Lesson 10): the number a run reports
for its quantized model comes from the artifact *as read back from disk*,
dequantized and rebanked into a fresh GPT, never from tensors still in memory.
So a format bug, a lossy codec or a naming slip shows up as a bad bpb here
rather than in the record folder.

    RUN/final_model.pt    (EMA weights)         --load_model, unbank-->
    RUN/calibration.pt    (Hessians, act RMS)   --quantize_state_dict--> QState
    QState                --write_artifact-->   RUN/final_model.int6.ptz
    RUN/final_model.int6.ptz --read_artifact, dequantize, rebank--> fresh GPT --eval_packed--> val_bpb_roundtrip

Under torchrun rank 0 quantizes and writes; every rank then reads the file and
takes part in the (collective) evaluation.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from pgolf.errors import ArtifactError

ARTIFACT_NAME = "final_model.int6.ptz"
MODEL_NAME = "final_model.pt"
CALIBRATION_NAME = "calibration.pt"


def _assert_same_qstate(a: dict, b: dict) -> None:
    """What came back from disk is bit-identical to what was written."""
    assert list(a["tensors"]) == list(b["tensors"]), "artifact changed the tensor order"
    for name, t in a["tensors"].items():
        u = b["tensors"][name]
        assert u.dtype == t.dtype and u.shape == t.shape and torch.equal(u, t.cpu()), f"artifact changed {name}"


def quantize_run(run_dir: str | Path, compressor: str | None = None, evaluate: bool = True,
                 data_dir: str | Path | None = None) -> dict:
    """Quantize RUN/final_model.pt into RUN/final_model.int6.ptz, roundtrip-evaluate it, update report.json.

    Returns the fields written to the report.
    """
    from pgolf.checkpoint import import_record_state_dict, load_model, unbank_state_dict
    from pgolf.config import load_json
    from pgolf.distributed import barrier, get_dist, is_main
    from pgolf.pack import packed_code_bytes
    from pgolf.quant.artifact import read_artifact, write_artifact
    from pgolf.quant.calibrate import load_calibration
    from pgolf.quant.mixed import dequantize_state_dict, quantize_state_dict, summary_by_category, summary_lines
    from pgolf.report import read_report, recorded_data_dir, update_report
    from pgolf.runlog import RunLog

    run = Path(run_dir)
    cfg_path = run / "config.json"
    if not cfg_path.exists():
        raise ArtifactError(f"{cfg_path}: not found (is {run} a run directory?)")
    cfg = load_json(cfg_path)
    if compressor is not None:
        cfg = cfg.replace({"quant.compressor": compressor})
    qcfg = cfg.quant
    report = read_report(run)
    device = get_dist().device
    log = RunLog(run / "train.jsonl")
    art_path = run / ARTIFACT_NAME
    fields: dict = {}

    t0 = time.perf_counter()
    if is_main():
        model = load_model(run / MODEL_NAME, cfg)
        calib = load_calibration(run / CALIBRATION_NAME)
        hessians, act_rms = calib["hessians"], calib["act_rms"]
        sd = unbank_state_dict(model.state_dict(), cfg.model)
        if device.type == "cuda":  # GPTQ runs where the tensors are
            sd = {k: v.to(device) for k, v in sd.items()}
            hessians = {k: v.to(device) for k, v in hessians.items()}
        t_q = time.perf_counter()
        qstate = quantize_state_dict(sd, hessians, act_rms, qcfg)
        gptq_s = time.perf_counter() - t_q
        for line in summary_lines(qstate):
            log.info(line)
        info = write_artifact(art_path, qstate, qcfg)
        for note in info.notes:
            log.info(note)
        for name, n_bytes in info.streams.items():
            log.event("artifact_stream", stream=name, coder=info.coders[name], raw_bytes=info.raw_streams[name],
                      bytes=n_bytes)
        code_raw, code_bytes = packed_code_bytes(cfg_path.read_text())
        fields.update(
            model_bytes=info.model_bytes, code_bytes=code_bytes, code_raw_bytes=code_raw,
            artifact_bytes=info.model_bytes + code_bytes, size_cap_bytes=qcfg.size_cap_bytes,
            artifact_headroom_bytes=qcfg.size_cap_bytes - info.model_bytes - code_bytes,
            artifact_streams=info.streams, artifact_coders=info.coders, compressor=qcfg.compressor,
            gptq_seconds=round(gptq_s, 3), compress_seconds=round(info.compress_s, 3),
            quant_summary={k: len(v) for k, v in summary_by_category(qstate).items()},
        )
        log.event("artifact", path=str(art_path), model_bytes=info.model_bytes, code_bytes=code_bytes,
                  total_bytes=fields["artifact_bytes"], headroom_bytes=fields["artifact_headroom_bytes"],
                  gptq_s=round(gptq_s, 3), compress_s=round(info.compress_s, 3))
        if fields["artifact_headroom_bytes"] < 0:
            log.info(f"WARNING: code + model = {fields['artifact_bytes']:,} bytes exceeds the cap "
                     f"{qcfg.size_cap_bytes:,}; `pgolf size` and `pgolf pack` will refuse it")
    barrier()

    # The roundtrip: from the bytes on disk only.
    t_rt = time.perf_counter()
    back = read_artifact(art_path)
    decompress_s = time.perf_counter() - t_rt
    if is_main():
        _assert_same_qstate(qstate, back)
    fresh = import_record_state_dict(dequantize_state_dict(back), cfg.model).to(device)
    fresh.set_looping(True)  # scored as it was trained last: recurrent (as pgolf eval does)
    fresh.eval()
    fields["decompress_seconds"] = round(decompress_s, 3)
    fields["quant_seconds"] = round(time.perf_counter() - t0, 3)
    log.event("roundtrip_load", decompress_s=round(decompress_s, 3), quant_s=fields["quant_seconds"])

    if evaluate:
        from pgolf.data import load_val
        from pgolf.evaluate import eval_packed

        t_ev = time.perf_counter()
        val = load_val(recorded_data_dir(run, data_dir), include_tail=cfg.eval.include_tail,
                       val_docs_limit=cfg.eval.val_docs_limit, seq_len=cfg.eval.eval_seq_len)
        meter = eval_packed(fresh, val, cfg.eval)
        fields.update(val_bpb_roundtrip=meter.bpb(), val_loss_roundtrip=meter.loss(),
                      roundtrip_eval_seconds=round(time.perf_counter() - t_ev, 3))
        prequant = report.get("val_bpb_prequant", report.get("val_bpb"))
        if isinstance(prequant, (int, float)):
            fields["quant_bpb_delta"] = fields["val_bpb_roundtrip"] - prequant
        log.event("roundtrip", val_bpb=fields["val_bpb_roundtrip"], val_loss=fields["val_loss_roundtrip"],
                  quant_bpb_delta=fields.get("quant_bpb_delta"), eval_s=fields["roundtrip_eval_seconds"])
    phase = {"quantize": fields["quant_seconds"]}
    if "roundtrip_eval_seconds" in fields:
        phase["roundtrip_eval"] = fields["roundtrip_eval_seconds"]
    update_report(run, {**fields, "phase_seconds": phase})
    log.close()
    return fields


def cmd_quantize(args) -> int:
    from pgolf.distributed import init_distributed

    init_distributed()
    quantize_run(args.run_dir, compressor=args.compressor, evaluate=not args.no_eval)
    return 0
