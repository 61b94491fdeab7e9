"""Trained weights -> compressed artifact -> read back -> roundtrip bpb.

The roundtrip is mandatory: the number a run reports
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
from torch import nn

from pgolf.checkpoint import load_model, unbank_state_dict
from pgolf.config import RunConfig
from pgolf.data import load_val
from pgolf.distributed import barrier, is_main
from pgolf.evaluate import eval_packed, model_from_qstate
from pgolf.quant.artifact import read_artifact, write_artifact
from pgolf.quant.calibrate import load_calibration
from pgolf.quant.mixed import quantize_state_dict, summary_by_category, summary_lines
from pgolf.rundir import RunDir
from pgolf.runlog import RunLog


def _assert_same_qstate(a: dict, b: dict) -> None:
    """What came back from disk is bit-identical to what was written."""
    assert list(a["tensors"]) == list(b["tensors"]), "artifact changed the tensor order"
    for name, t in a["tensors"].items():
        u = b["tensors"][name]
        assert u.dtype == t.dtype and u.shape == t.shape and torch.equal(u, t.cpu()), f"artifact changed {name}"


def quantize_run(cfg: RunConfig, run: RunDir, *, code_bytes: tuple[int, int], evaluate: bool = True,
                 data_dir: str | Path | None = None) -> tuple[dict, nn.Module]:
    """Quantize RUN/final_model.pt into the artifact, roundtrip-evaluate it, update report.json.

    `code_bytes` is (raw source bytes, counted bytes of train_gpt.py): the caller knows what code
    it submits. Returns the figures written to the report and the model read back from disk
    (looped, on this rank's device), ready to be evaluated further.
    """
    qcfg = cfg.quant
    report = run.read_report()
    log = RunLog(run.train_log)
    art_path = run.artifact
    fields: dict = {}

    t0 = time.perf_counter()
    if is_main():
        model = load_model(run.require(run.final_model, "train the run first"), cfg)
        calib = load_calibration(run.require(run.calibration, "train the run first"))
        hessians, act_rms = calib["hessians"], calib["act_rms"]
        # GPTQ and LQER run on the CPU in fp32 as the seed's do: on the GPU TF32 (on for training) would
        # round GPTQ's block updates and cuSOLVER's SVD signs would move symbols and bytes.
        sd = unbank_state_dict(model.state_dict(), cfg.model)
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
        code_raw, code_counted = code_bytes
        fields.update(
            model_bytes=info.model_bytes, code_bytes=code_counted, code_raw_bytes=code_raw,
            artifact_bytes=info.model_bytes + code_counted, size_cap_bytes=qcfg.size_cap_bytes,
            artifact_headroom_bytes=qcfg.size_cap_bytes - info.model_bytes - code_counted,
            artifact_streams=info.streams, artifact_coders=info.coders, compressor=qcfg.compressor,
            gptq_seconds=round(gptq_s, 3), compress_seconds=round(info.compress_s, 3),
            quant_summary={k: len(v) for k, v in summary_by_category(qstate).items()},
        )
        log.event("artifact", path=str(art_path), model_bytes=info.model_bytes, code_bytes=code_counted,
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
    fresh = model_from_qstate(back, cfg)
    fields["decompress_seconds"] = round(decompress_s, 3)
    fields["quant_seconds"] = round(time.perf_counter() - t0, 3)
    log.event("roundtrip_load", decompress_s=round(decompress_s, 3), quant_s=fields["quant_seconds"])

    if evaluate:
        t_ev = time.perf_counter()
        val = load_val(run.data_dir(data_dir), include_tail=cfg.eval.include_tail,
                       val_docs_limit=cfg.eval.val_docs_limit, seq_len=cfg.eval.eval_seq_len)
        meter = eval_packed(fresh, val, cfg.eval)
        fields.update(val_bpb_roundtrip=meter.bpb(), val_loss_roundtrip=meter.loss(),
                      roundtrip_eval_seconds=round(time.perf_counter() - t_ev, 3))
        if report.val_bpb_prequant is not None:
            fields["quant_bpb_delta"] = fields["val_bpb_roundtrip"] - report.val_bpb_prequant
        log.event("roundtrip", val_bpb=fields["val_bpb_roundtrip"], val_loss=fields["val_loss_roundtrip"],
                  quant_bpb_delta=fields.get("quant_bpb_delta"), eval_s=fields["roundtrip_eval_seconds"])
    phase = {"quantize": fields["quant_seconds"]}
    if "roundtrip_eval_seconds" in fields:
        phase["roundtrip_eval"] = fields["roundtrip_eval_seconds"]
    run.update_report(**fields, phase_seconds=phase)
    log.close()
    return fields, fresh

