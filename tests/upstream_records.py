"""Synthetic records in the challenge's formats, written from scratch for tests (no copies of real records).

`hyperparameter_dump(cfg)` renders a config the way the record scripts print their
`Hyperparameters` class (lower-case knob names, Python's True/False, the schedule
strings); `upstream_log(...)` wraps a dump in the script's progress and result lines;
`upstream_record(...)` lays out a folder: train_gpt.py, submission.json, README.md and
one `train_seed<N>.log` per logged seed. Every figure is a keyword, so a test changes
exactly the one it is about.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from pgolf.app.envknobs import FIXED, MAPPED
from pgolf.config import RunConfig, load_preset

RULER = "=" * 100
SOURCE = "import os\nimport torch\n\n\ndef main():\n    print('a record script stand-in')\n\n\nmain()\n"


def _show(v) -> str:
    if isinstance(v, bool):
        return str(v)
    return str(v)


def _field(cfg: RunConfig, dotted: str):
    section, name = dotted.split(".")
    return getattr(getattr(cfg, section), name)


def hyperparameter_dump(cfg: RunConfig, *, seed: int | None = None, caseops: bool = True,
                        extra: dict | None = None) -> dict[str, str]:
    """name -> printed value, as a record script's dump shows `cfg` (plus its paths and bookkeeping)."""
    hp: dict[str, str] = {}
    for name, (targets, _) in MAPPED.items():
        value = _field(cfg, targets[0])
        if name == "TTT_SHORT_SCORE_FIRST_STEPS":
            value = ",".join(f"{d}:{c}" for d, c in value)
        hp[name.lower()] = _show(value)
    hp["seed"] = str(seed if seed is not None else cfg.train.seed)
    stages = cfg.train.seq_len_stages
    hp["train_seq_schedule"] = ",".join(f"{n}@{p:.3f}" for n, p in stages)
    hp["train_seq_len"] = str(max(n for n, _ in stages))
    hp["ttt_q_lora"] = str(cfg.ttt.mask in ("all", "no_v"))
    hp["ttt_v_lora"] = str(cfg.ttt.mask in ("all", "no_q"))
    hp["ttt_short_score_first_enabled"] = str(bool(cfg.ttt.short_chunk_steps))
    for name, value in FIXED.items():
        hp[name.lower()] = {"1": "True", "0": "False"}.get(value, value)
    variant = "sp8192_lossless_caps_caseops_v1_reserved" if caseops else "sp8192"
    hp.update({
        "caseops_enabled": str(caseops), "data_dir": "./data/",
        "datasets_dir": f"./data/datasets/datasets/fineweb10B_{variant}",
        "tokenizer_path": f"./data/datasets/tokenizers/fineweb_8192_bpe_{variant}.model",
        "run_id": f"run-{hp['seed']}", "logfile": f"logs/run-{hp['seed']}.txt", "world_size": "8", "rank": "0",
        "local_rank": "0", "distributed": "True", "is_main_process": "True", "grad_accum_steps": "1",
        "eval_stride": "1536", "embed_lr": "0.6",
    })
    hp.update(extra or {})
    return dict(sorted(hp.items()))


def upstream_log(seed: int = 42, *, cfg: RunConfig | None = None, bpb: float = 1.05749056, caseops: bool = True,
                 train_shards: int = 80, val_docs: int = 50_000, val_tokens: int = 47_853_343,
                 train_ms: int = 595_913, eval_s: float = 588.8, model_bytes: int = 15_946_917,
                 code_bytes: int = 39_907, source: str = SOURCE, peer_k: int = 4, hp_extra: dict | None = None,
                 cut_at: str | None = None) -> str:
    """A seed log laid out as the record scripts print it; `cut_at` stops it before the first line containing it."""
    cfg = cfg or load_preset("seed")
    hp = hyperparameter_dump(cfg, seed=seed, caseops=caseops, extra=hp_extra)
    loss = bpb * 2.18834
    lines = ["Hyperparameters:"] + [f"  {k}: {v}" for k, v in hp.items()]
    lines += [RULER] + source.rstrip("\n").splitlines() + [RULER]
    lines += ["Running Python 3.12.3", "Running PyTorch 2.10.0+cu130", RULER,
              f"train_shards: {train_shards}", f"val_tokens: {val_tokens}", "model_params:35945671",
              "gptq:reserving 4s, effective=596000ms"]
    steps = 5006
    lines += [f"{s}/20000 train_loss: {9.0 - s / 1000:.4f} train_time: {s * train_ms / steps / 60000:.1f}m "
              f"tok/s: 6543210" for s in (1, 2, 3, 500, 1000, 5000)]
    lines += [f"{steps}/20000 train_loss: 2.3456 train_time: {train_ms / 60000:.1f}m tok/s: 6543210",
              f"{steps}/20000 val_loss: 2.3422 val_bpb: {bpb + 0.0128:.4f}",
              f"stopping_early: wallclock_cap train_time: {train_ms}ms step: {steps}/20000",
              "peak memory allocated: 41710 MiB reserved: 46988 MiB",
              f"diagnostic pre-quantization post-ema val_loss:{loss + 0.003:.8f} val_bpb:{bpb + 0.0015:.8f} "
              "eval_time:15789ms",
              "Serialized model: 135417533 bytes", "Code size (uncompressed): 201974 bytes",
              f"Code size (compressed): {code_bytes} bytes", "GPTQ:collected 67 Hessians in 3.9s",
              "Serialize: per-group compression done in 109.6s",
              f"Serialized model quantized+pergroup: {model_bytes} bytes",
              f"Total submission size quantized+pergroup: {model_bytes + code_bytes} bytes",
              "Deserialize: decompression done in 20.2s",
              f"diagnostic quantized val_loss:{loss + 0.02:.8f} val_bpb:{bpb + 0.01:.8f} eval_time:23419ms",
              "ttt_lora:compile warmup done (260.5s)", "", "beginning TTT eval timer",
              f"ttt_phased: total_docs:{val_docs} prefix_docs:2500 suffix_docs:{val_docs - 2500} num_phases:1 "
              f"boundaries:[2500] target_tokens:{val_tokens} peer_k:{peer_k} conf_thresh:0.5 blend_w:0.8",
              "ttp: b2084/2084 bl:2.1000 bb:1.0100 rl:2.1000 rb:1.0100 dl:36899-97114 gd:0 sr:0 sf:0 tr:8/8 wt:0",
              f"peer_ens:coverage_tokens:{val_tokens}/{val_tokens} batches_covered:263",
              f"peer_ens:ensemble_covered_only val_loss:{loss:.6f} val_bpb:{bpb:.6f}",
              f"peer_ens:baseline val_loss:{loss + 0.002:.6f} val_bpb:{bpb + 0.001:.6f}",
              f"quantized_ttt_phased val_loss:{loss:.8f} val_bpb:{bpb:.8f} eval_time:{round(eval_s * 1000)}ms",
              f"total_eval_time:{eval_s:.1f}s"]
    if cut_at is not None:
        lines = lines[:next(i for i, t in enumerate(lines) if cut_at in t)]
    return "\n".join(lines) + "\n"


def upstream_record(folder: Path, logged: dict[int, float], *, seeds: list[int] | None = None,
                    results: dict[int, float] | None = None, submission: dict | None = None,
                    log_kw: dict | None = None, per_seed_kw: dict[int, dict] | None = None,
                    readme: str = "# A record\n") -> Path:
    """A record folder: a log per seed of `logged` (seed -> bpb); submission.json lists `seeds` (default: the
    logged ones) with `results` (seed -> bpb; default: the logged figures), val_bpb their mean."""
    folder.mkdir(parents=True)
    (folder / "train_gpt.py").write_text(SOURCE)
    code_bytes = (folder / "train_gpt.py").stat().st_size
    kw = {"code_bytes": code_bytes, **(log_kw or {})}
    for seed, bpb in logged.items():
        text = upstream_log(seed, bpb=bpb, **{**kw, **(per_seed_kw or {}).get(seed, {})})
        (folder / f"train_seed{seed}.log").write_text(text)
    seeds = list(logged) if seeds is None else seeds
    results = {**logged, **(results or {})}
    values = [results[s] for s in seeds]
    mean = math.fsum(values) / len(values)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    model_bytes = kw.get("model_bytes", 15_946_917)
    sub = {"author": "A. Golfer", "github_id": "agolfer", "name": "Synthetic record", "date": "2026-04-30",
           "track": "10min_16mb", "val_bpb": round(mean, 8), "val_bpb_std": round(std, 8), "seeds": seeds,
           "seed_results": {str(s): {"val_bpb": results[s], "artifact_bytes": model_bytes + code_bytes}
                            for s in seeds},
           "hardware": "8xH100 80GB SXM", "pytorch_version": "2.10.0+cu130", "bytes_code": code_bytes,
           "technique_summary": "synthetic", "compliance": {"train_under_600s": True, "eval_under_600s": True},
           "attribution": "tests"}
    sub.update(submission or {})
    (folder / "submission.json").write_text(json.dumps(sub, indent=2))
    (folder / "README.md").write_text(readme)
    return folder
