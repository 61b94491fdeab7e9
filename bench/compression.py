"""Compression benchmark: how many bytes each coder needs for one trained, quantized model.

    python bench/compression.py                 # train the tiny preset on the embedded corpus first
    python bench/compression.py --run RUN_DIR   # a finished run (final_model.pt + calibration.pt)
    python bench/compression.py --preset cpu --work DIR --set quant.passthrough_max_numel=4096

Prints one JSON line per scheme: every codec on the flat tensor stream (with
and without a stride-2 byte shuffle) and the record's per-group layout
(the real artifact writer). Each line has the compressed bytes, bits per model
parameter, the order-0 entropy of the quantized int8 symbols (the floor for a
coder that ignores context), and the seconds to compress and to decompress.
Every scheme is checked to decode bit-exactly.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _trained_run(preset: str, work: Path) -> Path:
    """Prepare the embedded corpus and train `preset` into WORK/run (minutes on a CPU for `cpu`)."""
    from pgolf.config import load_preset
    from pgolf.prepare import prepare_data
    from pgolf.train import train

    cfg = load_preset(preset)
    data = work / "data"
    prepare_data(source="embedded", out_dir=data, vocab_size=cfg.model.vocab_size, val_docs=60, caseops=True,
                 shard_tokens=1_000_000, overwrite=True, progress=False)
    run = work / "run"
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the JSON lines
        train(cfg, data, run)
    return run


def _quantized(run: Path, overrides: dict):
    from pgolf.checkpoint import load_model, unbank_state_dict
    from pgolf.config import load_json
    from pgolf.quant.calibrate import load_calibration
    from pgolf.quant.mixed import quantize_state_dict

    cfg = load_json(run / "config.json")
    if overrides:
        cfg = cfg.replace(overrides)
    model = load_model(run / "final_model.pt", cfg)
    calib = load_calibration(run / "calibration.pt")
    sd = unbank_state_dict(model.state_dict(), cfg.model)
    num_params = sum(t.numel() for t in model.state_dict().values())
    return cfg, quantize_state_dict(sd, calib["hessians"], calib["act_rms"], cfg.quant), num_params


def _symbols(qstate) -> np.ndarray:
    """Every int8 code of the GPTQ'd matrices, flattened (what the per-group streams hold)."""
    parts = [t.numpy().reshape(-1) for n, t in qstate["tensors"].items() if n.endswith(".q")]
    return np.concatenate(parts) if parts else np.zeros(0, np.int8)


def bench(run: Path, overrides: dict | None = None) -> list[dict]:
    from pgolf.quant import codecs
    from pgolf.quant.artifact import read_artifact, tensors_to_bytes, write_artifact

    cfg, qstate, num_params = _quantized(run, overrides or {})
    symbols = _symbols(qstate)
    h0 = codecs.order0_entropy_bits(symbols)
    common = {"model_params": num_params, "q_symbols": int(symbols.size), "order0_entropy_bits": round(h0, 4),
              "order0_floor_bytes": int(np.ceil(h0 * symbols.size / 8))}
    _, flat = tensors_to_bytes(qstate["tensors"])
    rows = []
    specs = [c for c in codecs.available_codecs()] + [f"shuffle2+{c}" for c in ("brotli", "lzma", "zstd")]
    for spec in specs:
        t0 = time.perf_counter()
        blob = codecs.compress_spec(flat, spec)
        t1 = time.perf_counter()
        back = codecs.decompress_spec(blob, spec)
        t2 = time.perf_counter()
        assert back == flat, f"{spec} did not roundtrip"
        rows.append({"scheme": spec, "bytes": len(blob), "raw_bytes": len(flat),
                     "bits_per_param": round(8 * len(blob) / num_params, 4),
                     "compress_s": round(t1 - t0, 3), "decompress_s": round(t2 - t1, 3), **common})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.ptz"
        t0 = time.perf_counter()
        info = write_artifact(path, qstate, dataclasses.replace(cfg.quant, compressor="pergroup"))
        t1 = time.perf_counter()
        back = read_artifact(path)
        t2 = time.perf_counter()
        assert all(torch.equal(back["tensors"][n], t) for n, t in qstate["tensors"].items())
        rows.append({"scheme": "pergroup", "bytes": info.model_bytes, "raw_bytes": len(flat),
                     "bits_per_param": round(8 * info.model_bytes / num_params, 4),
                     "compress_s": round(t1 - t0, 3), "decompress_s": round(t2 - t1, 3),
                     "streams": {n: [info.coders[n], b] for n, b in info.streams.items()},
                     "notes": info.notes, **common})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=None, help="a finished run directory (default: train --preset first)")
    ap.add_argument("--preset", default="tiny", help="preset to train when --run is not given (tiny | cpu)")
    ap.add_argument("--work", default=None, help="keep the trained run here (reused when it exists)")
    ap.add_argument("--set", action="append", default=[], metavar="quant.FIELD=VALUE",
                    help="quantize with this override, e.g. quant.passthrough_max_numel=4096 (repeatable)")
    args = ap.parse_args(argv)
    from pgolf.config import parse_set_args

    overrides = parse_set_args(args.set)
    torch.manual_seed(0)
    if args.run:
        rows = bench(Path(args.run), overrides)
    elif args.work:
        work = Path(args.work)
        run = work / "run" if (work / "run" / "final_model.pt").exists() else _trained_run(args.preset, work)
        rows = bench(run, overrides)
    else:
        with tempfile.TemporaryDirectory(prefix="pgolf-bench-") as tmp:
            rows = bench(_trained_run(args.preset, Path(tmp)), overrides)
    for row in rows:
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
