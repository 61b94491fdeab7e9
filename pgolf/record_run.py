"""A record run in one process, as the packed train_gpt.py and `pgolf run` execute it:

    train (EMA weights, Hessians inside the clock, pre-quantization score)
      -> quantize (artifact on disk, read back, roundtrip score)
      -> score-first TTT on the model read back from disk (when the config enables it)

One resolved config goes in; each stage's model is evaluated once; every figure lands
in RUN/report.json. The caller says how many bytes of code it submits (`code_bytes`),
since only it knows whether it runs from the package or from a packed file.
"""

from __future__ import annotations

from pathlib import Path

from pgolf.config import RunConfig
from pgolf.data import load_val
from pgolf.evaluate import ttt_phase
from pgolf.quantize import quantize_run
from pgolf.rundir import Report, RunDir
from pgolf.runlog import RunLog
from pgolf.train import train


def record_run(cfg: RunConfig, data_dir: str | Path, run: RunDir, *, code_bytes: tuple[int, int],
               checkpoints: bool = True) -> Report:
    """Train, quantize and evaluate `cfg` on DATA_DIR into RUN; returns the run's report.

    `checkpoints=False` (the packed file) trains without checkpoint.pt (`train`)."""
    train(cfg, data_dir, run.path, checkpoints=checkpoints)
    quantized, model = quantize_run(cfg, run, code_bytes=code_bytes, data_dir=data_dir)
    log = RunLog(run.eval_log)
    # The seed's evaluation log line for the roundtrip figure quantize just computed (audits match on it).
    log.info(f"diagnostic quantized val_loss:{quantized['val_loss_roundtrip']:.8f} "
             f"val_bpb:{quantized['val_bpb_roundtrip']:.8f} "
             f"eval_time:{int(round(quantized['roundtrip_eval_seconds'] * 1000))}ms")
    if cfg.ttt.enabled:
        val = load_val(data_dir, include_tail=cfg.eval.include_tail, val_docs_limit=cfg.eval.val_docs_limit,
                       seq_len=cfg.eval.eval_seq_len)
        figures, phases, _ = ttt_phase(model, val, cfg, log)
        run.update_report(**figures, phase_seconds=phases)
    log.close()
    return run.read_report()
