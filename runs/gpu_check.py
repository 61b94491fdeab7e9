"""The GPU acceptance check: what a first session with one CUDA GPU runs to prove pgolf's GPU paths.

    bash runs/gpu_check.sh                       # picks a Python with torch, then runs this
    python runs/gpu_check.py [--strict] [--data DIR] [--out DIR] [--json FILE] [--only a,b] [--budget NAME=S]

Sections, in order, each in its own process under its own wall-clock limit (a hang or a crash in one
costs that section's budget and is reported; the next section still runs):

  environment  torch, CUDA, GPU name and memory, FlashAttention 3, Triton, lrzip, packages, world size
  pytest_gpu   `pytest -m gpu -q`: passed / failed / skipped / errors, and the failing test ids
  data         the embedded corpus prepared with the model's vocabulary (no network), plus a training
               shard of random tokens with FineWeb-like document lengths (or --data DIR, used as given)
  parity       the same weights and batches for a few training steps on the GPU and under CUDA emulation
               on the CPU (pgolf.emulation), against the bf16 noise of emulation vs fp32
  train        the preset's model (record shape) on the real training loop with torch.compile and FA3,
               one sequence stage: steps, ms/step, tokens/s, peak CUDA memory
  ttt          score-first TTT (LoRA, global SGD phase, peer ensemble) on ~200 validation documents:
               seconds, tokens/s, bpb (of a model trained for seconds: it shows the path runs, not a score)
  compile      the compile warmups of train and TTT: graphs built, seconds, graphs built after the warmup
               (recompiles the warmup should have prevented); `bench/compile_report.py` is run when present

On a machine without CUDA every GPU section is skipped with the reason, the table and the JSON are
still written, and the exit code is 0 (with --strict: 1 when anything is missing or skipped). A
failed or timed-out section exits 1. `--on-cpu` runs the GPU sections' code at toy size on the CPU
(tiny preset, no compile); its numbers mean nothing, it checks this script.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable from a checkout that was never pip-installed
    sys.path.insert(0, str(REPO))

FORMAT = "pgolf-gpu-check-v1"
# Run in this order: parity (correctness) before the long timing sections, compile last because it
# sums up what train and ttt compiled.
SECTIONS = ("environment", "pytest_gpu", "data", "parity", "train", "ttt", "compile")
# Seconds per section. Together they stay under the 10 minutes the check is allowed; a section that
# would run past --total-seconds gets what is left, or is skipped when that is under MIN_SECTION_S.
# The compile warmups are the unknown (train builds 5-6 fullgraph forward+backward graphs of the
# looped 11-layer model before its clock starts): --budget train=400 --total-seconds 900 if they need more.
BUDGET_S = {"pytest_gpu": 75, "data": 40, "parity": 75, "train": 240, "ttt": 130,
            "compile": 30}
TOTAL_S = 600
MIN_SECTION_S = 15
NEEDS_CUDA = ("pytest_gpu", "data", "train", "compile", "ttt", "parity")

# FineWeb SP8192's validation split averages 957 tokens per document (47,853,343 targets over 50,000
# documents). A lognormal with sigma 1 and that mean puts ~5% of documents over the 3072-token cap, so
# packed rows hold about as many segments as the record's do and hit the cu_seqlens buckets its warmup builds.
SYNTH_MEAN_DOC_TOKENS = 957
SYNTH_SIGMA = 1.0

# Parity: CUDA and emulation both round to bf16 where the record does, but not identically (CUDA
# autocast keeps softmax and norms in fp32, TF32, FA3's own kernel). Each is an approximation of the
# fp32 step, so their distance should stay within a small multiple of emulation's own distance from
# fp32. The floor covers steps where that distance happens to be tiny.
PARITY_NOISE_MULT = 3.0
PARITY_FLOOR_NATS = 0.02

# Where runs/*_8xh100.sh download the challenge data; used instead of the embedded corpus when present.
CHALLENGE_DATA = REPO / "data" / "sp8192-caseops"

STATUSES = ("ok", "failed", "skipped", "timeout")
NOT_SELECTED = "not selected (--only)"  # skipped on request: --strict does not count these


class CheckError(Exception):
    """Bad input to the checker: printed as one line, exit 2."""


# =============================================================================== probes
# Each probe returns (present, detail). They are module functions so tests can force one to fail.
def probe_cuda() -> tuple[bool, str]:
    import torch

    if torch.cuda.is_available():
        return True, f"{torch.cuda.device_count()} device(s), CUDA {torch.version.cuda}"
    if torch.version.cuda is None:
        hint = ""
        if _nvidia_smi_sees_gpu():
            hint = ("; nvidia-smi sees a GPU: use a CUDA build of torch (rm -rf .venv && make setup, "
                    "or PGOLF_PYTHON=/path/to/python)")
        return False, f"no CUDA device (torch {torch.__version__} is a CPU-only build{hint})"
    return False, f"no CUDA device (torch {torch.__version__} is built for CUDA {torch.version.cuda}, none visible)"


def _nvidia_smi_sees_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def probe_fa3() -> tuple[bool, str]:
    try:
        mod = importlib.import_module("flash_attn_interface")
    except Exception as e:  # ImportError, or a CUDA extension that fails to load
        return False, f"flash_attn_interface not importable ({type(e).__name__}: {_first_line(str(e))})"
    return True, f"flash_attn_interface from {Path(getattr(mod, '__file__', '?')).parent}"


def probe_triton() -> tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "triton not installed"
    try:
        import triton
    except Exception as e:
        return False, f"triton installed but not importable ({type(e).__name__}: {_first_line(str(e))})"
    return True, f"triton {getattr(triton, '__version__', '?')}"


def probe_lrzip() -> tuple[bool, str]:
    path = shutil.which("lrzip")
    return (True, path) if path else (False, "lrzip not on PATH")


# pgolf's own runtime dependencies and pytest: on a machine with only a CUDA build of torch they may
# be absent, and a section should not fail on an ImportError nobody was told about.
PACKAGES = ("numpy", "sentencepiece", "brotli", "zstandard", "pytest")


def probe_packages() -> tuple[bool, str]:
    absent = [m for m in PACKAGES if importlib.util.find_spec(m) is None]
    if absent:
        return False, f"not installed: {', '.join(absent)} (pip install -e '.[test]')"
    return True, "numpy, sentencepiece, brotli, zstandard, pytest"


PROBES = {"cuda": "probe_cuda", "fa3": "probe_fa3", "triton": "probe_triton", "lrzip": "probe_lrzip",
          "packages": "probe_packages"}
# What each missing component costs, said once in the table.
CONSEQUENCE = {
    "cuda": "every GPU section is skipped",
    "fa3": "attention falls back to SDPA (not the record's path; the training graph is not one fullgraph)",
    "triton": "no torch.compile (inductor needs Triton for GPU kernels) and no fused MLP/CE kernels",
    "lrzip": "the lrzip codec is unavailable (quantized artifacts use brotli/lzma/zstd)",
    "packages": "sections that import them fail (data: sentencepiece, numpy; pytest_gpu: pytest)",
}


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[0][:200] if lines else ""


def run_probes() -> dict[str, dict]:
    """Every probe, looked up by name at call time (so a monkeypatched probe is the one used)."""
    this = sys.modules[__name__]
    out = {}
    for name, fn in PROBES.items():
        present, detail = getattr(this, fn)()
        out[name] = {"present": bool(present), "detail": detail}
    return out


# =============================================================================== results
def result(status: str, *, reason: str | None = None, figures: dict | None = None, notes: list | None = None,
           seconds: float = 0.0) -> dict:
    assert status in STATUSES, status
    return {"status": status, "reason": reason, "seconds": round(seconds, 2), "figures": figures or {},
            "notes": notes or []}


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    tmp.replace(path)


class Progress:
    """Figures a section has so far, on disk after every update: a section killed at its time limit
    still reports what it measured (steps done, graphs compiled, parity steps compared)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.figures: dict = {}
        self.notes: list[str] = []

    def update(self, **figures) -> None:
        self.figures.update(figures)
        self._flush()

    def note(self, text: str) -> None:
        self.notes.append(text)
        self._flush()

    def _flush(self) -> None:
        if self.path is not None:
            _write_json(self.path, {"figures": self.figures, "notes": self.notes})


class CompileWatch:
    """Counts dynamo compiles through its start/end callbacks: graphs, seconds, and which phase each fell
    in (`phase()` is asked at the end of every compile)."""

    def __init__(self, progress: Progress, prefix: str, phase):
        self.progress, self.prefix, self.phase = progress, prefix, phase
        self.events: list[dict] = []
        self._t0: float | None = None
        try:
            from torch._dynamo import callback

            callback.on_compile_start(self._start)
            callback.on_compile_end(self._end)
        except (ImportError, AttributeError) as e:  # an older torch: graphs counted, nothing else
            progress.note(f"no dynamo compile callbacks in this torch ({type(e).__name__}): "
                          f"graphs from dynamo's counters only")

    def _start(self, *args) -> None:
        self._t0 = time.perf_counter()

    def _end(self, *args) -> None:
        # Older torch calls the callbacks without arguments: each call is then counted as a graph.
        cid = getattr(args[0], "compile_id", "?") if args else "?"
        trigger = getattr(getattr(args[0], "callback_trigger", None), "name", "DYNAMO") if args else "DYNAMO"
        seconds = time.perf_counter() - (self._t0 or time.perf_counter())
        self.events.append({"id": str(cid), "trigger": trigger, "seconds": round(seconds, 3), "phase": self.phase()})
        self.progress.update(**self.figures())

    def figures(self) -> dict:
        from torch._dynamo.utils import counters

        p = self.prefix
        graphs = [e for e in self.events if e["trigger"] == "DYNAMO"]
        by_phase: dict[str, int] = {}
        for e in graphs:
            by_phase[e["phase"]] = by_phase.get(e["phase"], 0) + 1
        return {f"{p}_graphs": len(graphs), f"{p}_graphs_by_phase": by_phase,
                f"{p}_unique_graphs_dynamo": int(counters["stats"]["unique_graphs"]),
                f"{p}_graph_breaks": int(sum(counters["graph_break"].values())),
                f"{p}_recompiles": sum(1 for e in graphs if re.search(r"/[1-9]\d*$", e["id"])),
                f"{p}_compile_s": round(sum(e["seconds"] for e in self.events), 2),
                f"{p}_lazy_backward_compiles": sum(1 for e in self.events if e["trigger"] != "DYNAMO")}


# =============================================================================== paths and sizes
def out_dir(args) -> Path:
    return Path(args.out).resolve()


def data_dirs(args) -> tuple[Path, Path]:
    """(evaluation data, training data): the given --data for both, else what the data section prepares."""
    if args.data:
        d = Path(args.data).resolve()
        return d, d
    root = out_dir(args) / "data"
    return root / f"embedded{vocab_size(args)}", root / f"synthetic{vocab_size(args)}"


def preset_name(args) -> str:
    return "tiny" if args.on_cpu else args.preset


def vocab_size(args) -> int:
    from pgolf.config import load_preset

    return load_preset(preset_name(args)).model.vocab_size


def train_run_dir(args) -> Path:
    return out_dir(args) / "train_run"


def _cuda_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _memory_figures(prefix: str) -> dict:
    import torch

    if not torch.cuda.is_available():
        return {}
    gib = 2 ** 30
    return {f"{prefix}_peak_allocated_gib": round(torch.cuda.max_memory_allocated() / gib, 2),
            f"{prefix}_peak_reserved_gib": round(torch.cuda.max_memory_reserved() / gib, 2)}


def _reset_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _compile_setting(args, progress: Progress) -> str:
    if args.on_cpu:
        return "off"
    present, detail = probe_triton()
    if not present:
        progress.note(f"compile off: {detail} (inductor needs Triton for CUDA kernels)")
        return "off"
    return "on"


# =============================================================================== sections (in-process)
def section_environment(args, progress: Progress) -> dict:
    import torch

    probes = run_probes()
    figures = {"python": platform.python_version(), "torch": torch.__version__,
               "torch_cuda_build": torch.version.cuda, "cuda_available": probes["cuda"]["present"],
               "world_size": int(os.environ.get("WORLD_SIZE", "1")),
               "fa3": probes["fa3"]["detail"], "triton": probes["triton"]["detail"],
               "lrzip": probes["lrzip"]["detail"], "git_commit": _git_commit()}
    if probes["cuda"]["present"]:
        props = torch.cuda.get_device_properties(0)
        figures.update(cuda_device_count=torch.cuda.device_count(), gpu=props.name,
                       gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                       compute_capability=f"{props.major}.{props.minor}")
        if props.major != 9:
            progress.note(f"{props.name} is not a Hopper GPU (sm_{props.major}{props.minor}): FA3 targets sm_90; "
                          f"timings are not the record's H100 numbers")
    # What is missing is listed once, under the table (the JSON's "missing"), not again as notes.
    return result("ok", figures={**figures, "probes": probes}, notes=progress.notes)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def section_data(args, progress: Progress) -> dict:
    from pgolf.data import load_manifest
    from pgolf.prepare import prepare_data

    eval_dir, train_dir = data_dirs(args)
    if args.data:
        manifest = load_manifest(eval_dir)
        figures = {"eval_data": str(eval_dir), "train_data": str(train_dir), "train_data_kind": "as given",
                   "vocab_size": manifest.get("vocab_size"), "num_val_docs": manifest.get("num_val_docs")}
        want = vocab_size(args)
        if manifest.get("vocab_size") is not None and int(manifest["vocab_size"]) > want:
            return result("failed", reason=f"{eval_dir}: vocabulary {manifest['vocab_size']} exceeds the "
                          f"{preset_name(args)} model's {want}", figures=figures)
        return result("ok", figures=figures)
    vocab = vocab_size(args)
    val_docs = max(args.ttt_docs + 8, 16)
    manifest = _usable_manifest(eval_dir, vocab, val_docs)
    if manifest is None:
        prepare_data(source="embedded", out_dir=eval_dir, vocab_size=vocab, val_docs=val_docs, caseops=True,
                     shard_tokens=100_000_000, overwrite=True, progress=False)
        manifest = load_manifest(eval_dir)
        progress.note(f"prepared the embedded corpus into {eval_dir}")
    else:
        progress.note(f"reused {eval_dir}")
    progress.update(eval_data=str(eval_dir), vocab_size=manifest.get("vocab_size"),
                    num_val_docs=manifest.get("num_val_docs"),
                    num_train_tokens_embedded=manifest.get("num_train_tokens"))
    synth_tokens = 1 << 20 if args.on_cpu else 64 << 20
    write_synthetic_dir(eval_dir, train_dir, vocab, synth_tokens, seed=0)
    progress.update(train_data=str(train_dir), train_data_kind="random tokens, lognormal document lengths "
                    f"(mean {SYNTH_MEAN_DOC_TOKENS} tokens, as FineWeb SP8192)", synthetic_train_tokens=synth_tokens)
    return result("ok", figures=progress.figures, notes=progress.notes)


def _usable_manifest(d: Path, vocab: int, val_docs: int) -> dict | None:
    try:
        m = json.loads((d / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    ok = m.get("vocab_size_requested") == vocab and int(m.get("num_val_docs", 0)) >= val_docs
    return m if ok else None


def synthetic_tokens(vocab: int, num_tokens: int, seed: int):
    """uint16 ids in [2, vocab) with a BOS (1) at each document start; lognormal document lengths."""
    import numpy as np

    from pgolf.tokenizer import BOS_ID

    rng = np.random.default_rng(seed)
    mu = math.log(SYNTH_MEAN_DOC_TOKENS) - SYNTH_SIGMA ** 2 / 2
    lengths = np.maximum(2, rng.lognormal(mu, SYNTH_SIGMA, size=num_tokens // 64 + 16).astype(np.int64))
    starts = np.cumsum(np.concatenate([[0], lengths]))
    starts = starts[starts < num_tokens]
    tokens = rng.integers(2, vocab, size=num_tokens, dtype=np.int64)
    tokens[starts] = BOS_ID
    return tokens.astype(np.uint16)


def write_synthetic_dir(eval_dir: Path, train_dir: Path, vocab: int, num_tokens: int, seed: int) -> None:
    """TRAIN_DIR: the validation files, tokenizer and manifest of EVAL_DIR (linked) and one synthetic
    training shard: what `train` reads, so its packed rows look like the record's."""
    from pgolf.shards import write_shard

    train_dir.mkdir(parents=True, exist_ok=True)
    for src in eval_dir.iterdir():
        if src.name.startswith("fineweb_train_"):
            continue
        dst = train_dir / src.name
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        dst.symlink_to(src)
    shard = train_dir / "fineweb_train_000000.bin"
    if not shard.exists() or shard.stat().st_size != 1024 + 2 * num_tokens:
        write_shard(shard, synthetic_tokens(vocab, num_tokens, seed))


def _train_config(args, progress: Progress):
    from pgolf.config import load_preset

    cfg = load_preset(preset_name(args))
    if args.on_cpu:
        return cfg.replace({"train.iterations": 4, "train.max_wallclock_seconds": 0, "train.compile": "off",
                            "train.warmup_steps": 0, "eval.val_docs_limit": 8, "quant.calibration_batches": 1})
    top = cfg.train.seq_len_stages[-1][0]
    # One stage at the record's longest rows, looped from the start: the shape most of the record's
    # steps run, without compiling every (stage, looping, bucket) graph of the full schedule.
    return cfg.replace({
        "train.seq_len_stages": [[top, 1.0]], "train.enable_looping_at": 0.0, "train.iterations": 100_000,
        "train.max_wallclock_seconds": args.train_seconds + cfg.train.gptq_reserve_seconds,
        "train.warmup_steps": 1, "train.compile": _compile_setting(args, progress), "train.train_log_every": 5,
        "eval.val_docs_limit": args.ttt_docs, "quant.calibration_batches": 2})


def section_train(args, progress: Progress) -> dict:
    from pgolf import device
    from pgolf.train import train

    _, train_dir = data_dirs(args)
    run = train_run_dir(args)
    if run.exists():
        shutil.rmtree(run)
    cfg = _train_config(args, progress)
    log_path = run / "train.jsonl"

    def phase() -> str:  # train.jsonl is line-buffered: the warmup is over once its event is there
        try:
            return "after_warmup" if '"compile_warmup"' in log_path.read_text() else "warmup"
        except OSError:
            return "warmup"

    watch = CompileWatch(progress, "train", phase)
    attention_impl = device.policy_for(_cuda_device()).attention
    progress.update(preset=cfg.preset, attention=attention_impl, compile=cfg.train.compile,
                    seq_len=cfg.train.seq_len_stages[-1][0], step_tokens=cfg.train.train_batch_tokens,
                    train_data=str(train_dir))
    if not args.on_cpu and attention_impl != "fa3":
        progress.note("attention is SDPA, not FA3: this is not the record's path (see missing)")
    _reset_memory()
    summary = train(cfg, train_dir, run)
    _sync()
    steps = int(summary.get("steps", 0))
    train_s = float(summary.get("train_seconds", float("nan")))
    loss = summary.get("final_train_loss")
    figures = {"steps": steps, "train_seconds": round(train_s, 2),
               "ms_per_step": round(1000 * train_s / max(steps, 1), 1),
               "tokens_per_s": round(float(summary.get("tokens_per_second", float("nan"))), 1),
               "compile_warmup_s": round(float((summary.get("phase_seconds") or {}).get("compile_warmup", 0.0)), 2),
               "model_params": summary.get("model_params"), "final_train_loss": loss,
               "val_bpb_prequant": summary.get("val_bpb_prequant"), **train_log_figures(log_path),
               **watch.figures(), **_memory_figures("train")}
    progress.update(**figures)
    if loss is None or not math.isfinite(float(loss)):
        return result("failed", reason=f"final training loss {loss}", figures=progress.figures, notes=progress.notes)
    after = watch.figures()["train_graphs_by_phase"].get("after_warmup", 0)
    if after:
        progress.note(f"{after} graph(s) compiled after the compile warmup: the timed loop paid for them")
    return result("ok", figures=progress.figures, notes=progress.notes)


def train_log_figures(log_path: Path) -> dict:
    """What train.jsonl says so far: the last logged step, the warmup's seconds, and the steady ms/step
    between the 5th and the last logged step (past the first steps' allocator and cache setup). Also
    read after a time-out, when the section could not report itself."""
    try:
        events = [json.loads(ln) for ln in log_path.read_text().splitlines() if ln.strip()]
    except (OSError, ValueError):
        return {}
    out: dict = {}
    steps = [e for e in events if e.get("event") == "step"]
    if steps:
        out["last_logged_step"] = steps[-1]["step"]
    for e in events:
        if e.get("event") == "compile_warmup":
            out["compile_warmup_s"] = round(float(e.get("seconds", 0.0)), 2)
    later = [e for e in steps if e.get("step", 0) >= 5]
    if len(later) >= 2 and later[-1]["step"] > later[0]["step"]:
        a, b = later[0], later[-1]
        out["steady_ms_per_step"] = round(1000 * (b["elapsed_s"] - a["elapsed_s"]) / (b["step"] - a["step"]), 1)
        out["steady_from_step"] = a["step"]
    return out


def section_ttt(args, progress: Progress) -> dict:
    import torch

    from pgolf.config import load_json
    from pgolf.data import load_val
    from pgolf.evaluate import load_scored_model
    from pgolf.model import GPT
    from pgolf.rundir import RunDir
    from pgolf.ttt.score_first import run_ttt

    eval_dir, _ = data_dirs(args)
    run = RunDir(train_run_dir(args))
    docs = 4 if args.on_cpu else args.ttt_docs
    if run.final_model.exists():
        cfg = load_json(run.config)
        model, _ = load_scored_model(run, cfg, prequant=True)
        progress.note(f"model: the train section's EMA weights ({run.final_model})")
    else:
        from pgolf.config import load_preset

        cfg = load_preset(preset_name(args))
        torch.manual_seed(0)
        model = GPT(cfg.model).to(_cuda_device()).eval()
        model.set_looping(True)
        progress.note("model: random init (the train section left no final_model.pt); bpb means nothing")
    compile_setting = "off" if args.on_cpu or args.ttt_compile == "off" else _compile_setting(args, progress)
    # Half the documents before the global SGD pause, as the record's 2,500 of 50,000 are "before" too.
    cfg = cfg.replace({"eval.val_docs_limit": docs, "ttt.phased_prefix_docs": max(1, docs // 2),
                       "train.compile": compile_setting})
    val = load_val(eval_dir, val_docs_limit=docs)
    batches = {"n": 0}

    class _Log:  # run_ttt's log hook: batches done so far tell warmup compiles from later ones
        def event(self, name, **fields):
            if name == "ttt_batch":
                batches["n"] += 1
                progress.update(batches_done=batches["n"], own_bpb_so_far=round(float(fields["own_bpb"]), 4))

    watch = CompileWatch(progress, "ttt", lambda: "warmup_or_first_batch" if batches["n"] == 0 else "later_batches")
    progress.update(docs=len(val.docs), targets=int(val.num_targets), peer_mode=cfg.ttt.peer_mode,
                    peer_k=cfg.ttt.peer_k, compile=compile_setting)
    _reset_memory()
    res = run_ttt(model, val, cfg, log=_Log())
    _sync()
    secs = res.phase_seconds
    key, meter = _headline_tuple(res)
    figures = {"bpb": round(meter.bpb(), 5), "bpb_key": key, "own_bpb": round(res.own.bpb(), 5),
               "compliant": res.compliant, "batches": getattr(res, "num_batches", None),
               "global_sgd_phases": getattr(res, "num_global_phases", None),
               "compile_warmup_s": round(secs.get("compile_warmup_s", 0.0), 2),
               "eval_s": round(secs.get("eval_s", 0.0), 2), "global_sgd_s": round(secs.get("global_sgd_s", 0.0), 2),
               "total_s": round(secs.get("total_s", 0.0), 2),
               "tokens_per_s": round(res.target_tokens / max(secs.get("eval_s", 0.0), 1e-9), 1),
               **watch.figures(), **_memory_figures("ttt")}
    progress.update(**figures)
    if not math.isfinite(figures["bpb"]):
        return result("failed", reason=f"TTT bpb is {figures['bpb']}", figures=progress.figures, notes=progress.notes)
    return result("ok", figures=progress.figures, notes=progress.notes)


def _headline_tuple(res):
    head = res.headline
    return head() if callable(head) else head


def section_parity(args, progress: Progress) -> dict:
    """Steps of the same model on the same batches under three policies, losses compared per step."""
    from pgolf import device as device_mod
    from pgolf import emulation
    from pgolf.config import load_preset
    from pgolf.loader import DocumentPackingLoader
    from pgolf.data import train_files

    eval_dir, _ = data_dirs(args)
    cfg = load_preset(preset_name(args))
    tokens = 256 if args.on_cpu else args.parity_tokens
    steps = 2 if args.on_cpu else args.parity_steps
    seq_len = min(tokens, cfg.train.max_seq_len)
    tokens = tokens // seq_len * seq_len
    # Real text (the embedded corpus), several documents per row: attention masking and the loss
    # going down both show up in the losses, which random tokens on a fresh model would hide.
    loader = DocumentPackingLoader(train_files(eval_dir), 0, 1, tokens, "cpu")
    batches = [loader.next_batch(seq_len) for _ in range(steps)]
    if args.on_cpu:  # no GPU: the CPU fp32 policy stands in for it, so the code path runs
        device_policy, device_label = device_mod.cpu_policy(), "cpu fp32 (stand-in for the GPU)"
    else:
        device_policy, device_label = device_mod.cuda_policy("cuda"), "cuda"
    policies = {"device": device_policy, "emulated": emulation.emulated_cuda_policy(),
                "fp32": device_mod.cpu_policy()}
    progress.update(device=device_label, attention_device=device_policy.attention, tokens_per_step=tokens,
                    seq_len=seq_len, steps_planned=steps, preset=cfg.preset,
                    tolerance=f"|device - emulated| <= max({PARITY_FLOOR_NATS}, {PARITY_NOISE_MULT} x "
                              f"|emulated - fp32|) per step")
    rows = compare_steps(cfg, batches, policies, progress)
    bad = [r["step"] for r in rows if not r["within"]]
    if bad:
        return result("failed", reason=f"device vs emulation loss outside tolerance at step(s) {bad}",
                      figures=progress.figures, notes=progress.notes)
    return result("ok", figures=progress.figures, notes=progress.notes)


def compare_steps(cfg, batches, policies: dict, progress: Progress) -> list[dict]:
    """Train one initial model under each policy ("device", "emulated", "fp32") on the same batches;
    one row per step, written to `progress` as it goes."""
    import torch

    from pgolf.model import GPT

    torch.manual_seed(cfg.train.seed)
    base = GPT(cfg.model)  # built once: the record-size init takes seconds on a CPU
    runners = {name: _ParityRunner(cfg, base, policy) for name, policy in policies.items()}
    rows: list[dict] = []
    for i, batch in enumerate(batches):
        rows.append(parity_row(i + 1, {name: r.step(batch) for name, r in runners.items()}))
        progress.update(per_step=rows, steps_done=i + 1,
                        max_abs_loss_diff=max(r["abs_diff_device_emulated"] for r in rows))
    return rows


def parity_row(step: int, losses: dict[str, float]) -> dict:
    """One step's losses and verdict: |device - emulated| within max(floor, mult x |emulated - fp32|)."""
    noise = abs(losses["emulated"] - losses["fp32"])
    diff = abs(losses["device"] - losses["emulated"])
    tol = max(PARITY_FLOOR_NATS, PARITY_NOISE_MULT * noise)
    finite = all(math.isfinite(v) for v in losses.values())
    return {"step": step, **{f"loss_{k}": round(v, 5) for k, v in losses.items()},
            "abs_diff_device_emulated": round(diff, 5), "abs_diff_emulated_fp32": round(noise, 5),
            "tolerance": round(tol, 5), "within": bool(finite and diff <= tol)}


class _ParityRunner:
    """One model + optimizers under one policy; `step(batch)` returns the loss before the update."""

    def __init__(self, cfg, base, policy):
        from pgolf.optim import build_optimizers

        self.cfg, self.policy = cfg, policy
        with policy.activate():
            model = copy.deepcopy(base)
            policy.cast_model(model)
            self.model = model.to(policy.device)
            self.model.set_looping(cfg.model.num_loops > 0)
            self.opt = build_optimizers(self.model, cfg.train)
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    def step(self, batch) -> float:
        from pgolf.train import apply_update

        x, y, cu, max_seqlen = batch
        dev = self.policy.device
        with self.policy.activate():
            self.policy.apply_matmul_precision()
            with self.policy.autocast():
                loss = self.model(x.to(dev), y.to(dev), cu_seqlens=cu.to(dev), max_seqlen=max_seqlen)
            loss.backward()
            apply_update(self.opt, self.params, self.cfg.train.grad_clip_norm)
        return float(loss.detach().float())


IN_PROCESS = {"environment": section_environment, "data": section_data, "train": section_train,
              "ttt": section_ttt, "parity": section_parity}


# =============================================================================== the parent
def run_logged(cmd: list[str], log_path: Path, env: dict, budget_s: float) -> tuple[int | None, float]:
    """Run `cmd` in its own process group with its output in `log_path`; (exit code or None when killed at
    `budget_s`, seconds)."""
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO),
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)  # the whole group: a section's own children must not outlive its budget
            rc = None
    return rc, time.perf_counter() - t0


def run_child(section: str, args, budget_s: float, logs: Path) -> dict:
    """One section in its own process group, killed at `budget_s`; its progress file survives a kill."""
    logs.mkdir(parents=True, exist_ok=True)
    res_path, prog_path, log_path = (logs / f"{section}.result.json", logs / f"{section}.progress.json",
                                     logs / f"{section}.log")
    for p in (res_path, prog_path):
        p.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--section", section, "--section-dir", str(logs),
           *args.child_argv]
    env = _child_env()
    if args.on_cpu:  # every library call in the child then picks the CPU, also on a GPU machine
        env["CUDA_VISIBLE_DEVICES"] = ""
    rc, seconds = run_logged(cmd, log_path, env, budget_s)
    partial = _read_json(prog_path) or {}
    if section == "train" and (rc is None or rc != 0):
        from_log = train_log_figures(train_run_dir(args) / "train.jsonl")
        partial["figures"] = {**(partial.get("figures") or {}), **from_log}
    if rc is None:
        return result("timeout", reason=f"still running after its {budget_s:.0f} s budget (killed); "
                      f"figures are what it had measured", figures=partial.get("figures"),
                      notes=partial.get("notes"), seconds=seconds)
    res = _read_json(res_path)
    if rc != 0 or res is None:
        return result("failed", reason=f"exit {rc}: {_last_error(log_path)} (log: {log_path})",
                      figures=partial.get("figures"), notes=partial.get("notes"), seconds=seconds)
    res["seconds"] = round(seconds, 2)
    return res


def _child_env() -> dict:
    """The environment with this checkout first on PYTHONPATH: pgolf imports without a pip install."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def _kill_group(proc: subprocess.Popen) -> None:
    # The child leads its own session (start_new_session), so this reaches its workers too
    # (inductor's compile pool, pytest's), and nothing else.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _last_error(log_path: Path) -> str:
    """The line that says what went wrong: the exception line of a traceback, else the last line."""
    try:
        lines = [ln.rstrip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    for ln in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b", ln) or ln.startswith("pgolf: error"):
            return ln[:300]
    return lines[-1][:300] if lines else "no output"


def run_pytest(args, budget_s: float, logs: Path) -> dict:
    """`pytest -m gpu -q` in its own process group; counts from its summary line."""
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / "pytest_gpu.log"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rfEs", "-p", "no:cacheprovider", "tests"]
    rc, seconds = run_logged(cmd, log_path, _child_env(), budget_s)
    text = log_path.read_text(errors="replace")
    figures = parse_pytest(text)
    if rc is None:
        return result("timeout", reason=f"pytest still running after {budget_s:.0f} s (killed; log: {log_path})",
                      figures=figures, seconds=seconds)
    if rc == 5:  # pytest: no tests collected
        return result("failed", reason="pytest collected no gpu-marked tests", figures=figures, seconds=seconds)
    if rc != 0 or figures.get("failed", 0) or figures.get("errors", 0):
        why = f"{figures.get('failed', 0)} failed, {figures.get('errors', 0)} errors" if figures else f"exit {rc}"
        return result("failed", reason=f"{why} (log: {log_path})", figures=figures, seconds=seconds)
    notes = [f"skipped: {s}" for s in figures.get("skip_reasons", [])]
    return result("ok", figures=figures, notes=notes, seconds=seconds)


def parse_pytest(text: str) -> dict:
    """Counts from pytest's last summary line ('3 passed, 1 skipped in 2.1s'), failing ids, skip reasons."""
    counts: dict = {}
    summary = [ln for ln in text.splitlines() if re.search(r"\b(passed|failed|skipped|error|errors|deselected)\b", ln)
               and re.search(r"\bin [\d.]+s\b", ln)]
    if summary:
        for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)", summary[-1]):
            counts["errors" if word.startswith("error") else word] = int(n)
    failing = re.findall(r"^(?:FAILED|ERROR) (\S+)", text, flags=re.M)
    if failing:
        counts["failing"] = failing[:20]
    skips = re.findall(r"^SKIPPED \[\d+\] [^:]+(?::\d+)?: (.*)$", text, flags=re.M)
    if skips:
        counts["skip_reasons"] = sorted(set(s.strip() for s in skips))[:10]
    return counts


def run_compile(args, budget_s: float, logs: Path, results: dict) -> dict:
    """The compile figures train and ttt recorded, plus bench/compile_report.py's JSON lines when present."""
    figures: dict = {}
    notes: list[str] = []
    for sec in ("train", "ttt"):
        f = (results.get(sec) or {}).get("figures") or {}
        for key in (f"{sec}_graphs", f"{sec}_graphs_by_phase", f"{sec}_recompiles", f"{sec}_compile_s",
                    f"{sec}_lazy_backward_compiles", "compile_warmup_s"):
            if key in f:
                figures[key if key.startswith(sec) else f"{sec}_{key}"] = f[key]
    after = (figures.get("train_graphs_by_phase") or {}).get("after_warmup", 0)
    if after:
        notes.append(f"train compiled {after} graph(s) after its warmup (in the timed loop)")
    report = REPO / "bench" / "compile_report.py"
    t0 = time.perf_counter()
    status = "ok"
    reason = None
    if report.exists() and args.on_cpu:
        # compile_report compiles under the emulated policy with inductor on CPU: minutes per graph family,
        # and nothing a CPU run of this check needs; run it directly for those figures.
        notes.append("--on-cpu: bench/compile_report.py not run (its CPU inductor compiles take minutes)")
    elif report.exists():
        log_path = logs / "compile_report.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen([sys.executable, str(report)], stdout=subprocess.PIPE, stderr=log, text=True,
                                    cwd=str(REPO), env=_child_env(), start_new_session=True)
            try:
                out, _ = proc.communicate(timeout=budget_s)
                rc = proc.returncode
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                out, rc = "", None
        lines = []
        for ln in (out or "").splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(ln))
        figures["compile_report"] = lines
        if rc is None:
            status, reason = "timeout", f"bench/compile_report.py still running after {budget_s:.0f} s"
        elif rc != 0:
            status, reason = "failed", f"bench/compile_report.py exit {rc}: {_last_error(log_path)}"
    else:
        notes.append("bench/compile_report.py not present: counts are from dynamo's compile callbacks")
    if not any(figures.get(f"{sec}_graphs") for sec in ("train", "ttt")) and "compile_report" not in figures:
        return result("skipped", reason="nothing was compiled (compile off, or train and ttt did not get that far)",
                      figures=figures, notes=notes, seconds=time.perf_counter() - t0)
    return result(status, reason=reason, figures=figures, notes=notes, seconds=time.perf_counter() - t0)


def _skip_reason(section: str, probes: dict, args, results: dict) -> str | None:
    if section in NEEDS_CUDA and not args.on_cpu and not probes["cuda"]["present"]:
        return probes["cuda"]["detail"]
    if section == "pytest_gpu" and args.on_cpu:
        return "--on-cpu: the gpu-marked tests need CUDA"
    if section == "pytest_gpu" and importlib.util.find_spec("pytest") is None:
        return "pytest not installed"
    if section in ("train", "ttt", "parity"):
        data = results.get("data") or {}
        if data.get("reason") == NOT_SELECTED:  # data from an earlier run will do, if it is there
            missing = [str(d) for d in data_dirs(args) if not (d / "manifest.json").is_file()]
            if missing:
                return f"no data in {missing[0]}: run the data section too, or pass --data DIR"
        elif data.get("status") != "ok":
            return "the data section did not finish"
    if section == "compile" and not args.on_cpu and not probes["triton"]["present"]:
        return f"{probes['triton']['detail']}: nothing is compiled"
    return None


def check(args) -> dict:
    """Every requested section in order; returns the JSON document (also written to --json)."""
    t_start = time.perf_counter()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    logs = out_dir(args) / "logs"
    wanted = args.only or list(SECTIONS)
    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    results["environment"] = section_environment(args, Progress(None))
    results["environment"]["seconds"] = round(time.perf_counter() - t0, 2)
    probes = results["environment"]["figures"]["probes"]
    _echo(args, "environment", results["environment"])
    for section in SECTIONS[1:]:
        if section not in wanted:
            results[section] = result("skipped", reason=NOT_SELECTED)
            continue
        reason = _skip_reason(section, probes, args, results)
        left = args.total_seconds - (time.perf_counter() - t_start)
        budget = min(args.budgets[section], left)
        if reason is None and budget < MIN_SECTION_S:
            reason = f"out of time: {left:.0f} s left of the {args.total_seconds:.0f} s total"
        if reason is not None:
            results[section] = result("skipped", reason=reason)
        elif section == "pytest_gpu":
            results[section] = run_pytest(args, budget, logs)
        elif section == "compile":
            results[section] = run_compile(args, budget, logs, results)
        else:
            results[section] = run_child(section, args, budget, logs)
        results[section]["budget_s"] = round(budget, 1) if reason is None else None
        _echo(args, section, results[section])
    missing = [{"component": name, "reason": p["detail"], "consequence": CONSEQUENCE[name]}
               for name, p in probes.items() if not p["present"]]
    failed = [s for s, r in results.items() if r["status"] in ("failed", "timeout")]
    skipped = [s for s, r in results.items() if r["status"] == "skipped" and r["reason"] != NOT_SELECTED]
    doc = {"format": FORMAT, "started_utc": started, "total_seconds": round(time.perf_counter() - t_start, 2),
           "mode": "on-cpu" if args.on_cpu else ("gpu" if probes["cuda"]["present"] else "no-cuda"),
           "preset": preset_name(args), "strict": args.strict, "missing": missing, "failed": failed,
           "skipped": skipped, "sections": results}
    doc["exit_code"] = exit_code(doc)
    return doc


def exit_code(doc: dict) -> int:
    if doc["failed"]:
        return 1
    if doc["strict"] and (doc["missing"] or doc["skipped"]):
        return 1
    return 0


def _echo(args, section: str, res: dict) -> None:
    if not args.quiet:
        print(f"[gpu_check] {section}: {res['status']} ({res['seconds']:.1f} s)"
              + (f" - {res['reason']}" if res.get("reason") else ""), file=sys.stderr, flush=True)


# =============================================================================== the table
# The figures each section shows in the table (all of them are in the JSON).
TABLE_FIGURES = {
    "environment": ("gpu", "gpu_memory_gib", "torch", "torch_cuda_build", "world_size"),
    "pytest_gpu": ("passed", "failed", "skipped", "errors"),
    "data": ("vocab_size", "num_val_docs", "synthetic_train_tokens"),
    "train": ("steps", "ms_per_step", "steady_ms_per_step", "tokens_per_s", "train_peak_allocated_gib",
              "compile_warmup_s", "attention"),
    "compile": ("train_graphs", "train_recompiles", "train_compile_s", "train_compile_warmup_s", "ttt_graphs",
                "ttt_compile_s", "ttt_compile_warmup_s"),
    "ttt": ("docs", "bpb", "own_bpb", "eval_s", "compile_warmup_s", "tokens_per_s", "ttt_peak_allocated_gib"),
    "parity": ("steps_done", "max_abs_loss_diff", "device"),
}


def table(doc: dict) -> str:
    rows = [("section", "status", "seconds", "figures / reason")]
    for name, res in doc["sections"].items():
        figs = res.get("figures") or {}
        shown = ", ".join(f"{k}={_fmt(figs[k])}" for k in TABLE_FIGURES.get(name, ()) if k in figs)
        detail = res["reason"] if res["status"] != "ok" and res.get("reason") else shown
        if res["status"] != "ok" and res.get("reason") and shown:
            detail = f"{res['reason']} [{shown}]"
        rows.append((name, res["status"], f"{res['seconds']:.1f}", detail or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 16)
    par = (doc["sections"].get("parity") or {}).get("figures", {})
    for r in par.get("per_step", []):
        lines.append(f"  parity step {r['step']}: device {r['loss_device']:.5f}  emulated {r['loss_emulated']:.5f}  "
                     f"fp32 {r['loss_fp32']:.5f}  |diff| {r['abs_diff_device_emulated']:.5f} <= "
                     f"{r['tolerance']:.5f}: {'yes' if r['within'] else 'NO'}")
    for name, res in doc["sections"].items():
        for note in res.get("notes") or []:
            lines.append(f"  note ({name}): {note}")
    if doc["missing"]:
        lines.append("missing:")
        for m in doc["missing"]:
            lines.append(f"  {m['component']}: {m['reason']} -> {m['consequence']}")
    else:
        lines.append("missing: nothing")
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


# =============================================================================== command line
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="gpu_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "out" / "gpu_check"), help="working directory (data, run, logs)")
    ap.add_argument("--json", default=None, help="where to write the results (default OUT/gpu_check.json)")
    ap.add_argument("--data", default=None,
                    help="a prepared data directory to train and evaluate on (default: data/sp8192-caseops when "
                         "it is there, else the embedded corpus, prepared here, and a synthetic training shard)")
    ap.add_argument("--preset", default="seed", help="seed or record: the model trained and evaluated (default seed)")
    ap.add_argument("--only", default=None, help=f"comma-separated sections to run, of {','.join(SECTIONS[1:])} "
                    "(environment always runs)")
    ap.add_argument("--budget", action="append", default=[], metavar="SECTION=SECONDS",
                    help="wall-clock limit of one section (repeatable); defaults: "
                         + ", ".join(f"{k}={v}" for k, v in BUDGET_S.items()))
    ap.add_argument("--total-seconds", type=float, default=TOTAL_S, help=f"limit for everything (default {TOTAL_S})")
    ap.add_argument("--train-seconds", type=float, default=45.0, help="timed training seconds (default 45)")
    ap.add_argument("--ttt-docs", type=int, default=200, help="validation documents for TTT (default 200)")
    ap.add_argument("--ttt-compile", choices=("on", "off"), default="on",
                    help="torch.compile the TTT forward as the record does (default on; off when its warmup "
                         "does not fit the budget)")
    ap.add_argument("--parity-steps", type=int, default=4, help="training steps compared (default 4)")
    ap.add_argument("--parity-tokens", type=int, default=1024,
                    help="tokens per parity step (default 1024: the CPU side runs the record-size model)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a component is missing or a section skipped")
    ap.add_argument("--on-cpu", action="store_true",
                    help="run the GPU sections at toy size on the CPU (checks this script; numbers mean nothing)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    ap.add_argument("--section", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--section-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    _validate(args)
    if args.data is None and not args.on_cpu and (CHALLENGE_DATA / "manifest.json").is_file():
        args.data = str(CHALLENGE_DATA)  # the recipes' download location: real FineWeb beats the stand-ins
    # What a section's child process needs to rebuild the same settings (never --section itself).
    args.child_argv = [a for a in _child_argv(argv if argv is not None else sys.argv[1:])]
    return args


def _validate(args) -> None:
    if args.preset not in ("seed", "record"):
        raise CheckError(f"--preset {args.preset!r}: expected seed or record (the record-shape model)")
    if args.only is not None:
        names = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in names if s not in SECTIONS]
        if unknown or not names:
            raise CheckError(f"--only {args.only!r}: unknown section(s) {unknown}; expected some of "
                             f"{', '.join(SECTIONS[1:])}")
        args.only = names
    budgets = dict(BUDGET_S)
    for item in args.budget:
        name, sep, value = item.partition("=")
        if not sep or name not in BUDGET_S:
            raise CheckError(f"--budget {item!r}: expected SECTION=SECONDS with SECTION one of {', '.join(BUDGET_S)}")
        try:
            budgets[name] = float(value)
        except ValueError:
            raise CheckError(f"--budget {item!r}: {value!r} is not a number of seconds") from None
        if budgets[name] <= 0:
            raise CheckError(f"--budget {item!r}: must be > 0 seconds")
    args.budgets = budgets
    for name in ("total_seconds", "train_seconds"):
        if getattr(args, name) <= 0:
            raise CheckError(f"--{name.replace('_', '-')} must be > 0")
    for name in ("ttt_docs", "parity_steps", "parity_tokens"):
        if getattr(args, name) < 1:
            raise CheckError(f"--{name.replace('_', '-')} must be >= 1")
    if args.data is not None:
        d = Path(args.data)
        if not (d / "manifest.json").is_file():
            raise CheckError(f"--data {args.data}: no manifest.json there (prepare it with `pgolf data prepare` "
                             f"or download it with `pgolf data download`)")
    if args.section is not None and args.section not in IN_PROCESS:
        raise CheckError(f"--section {args.section!r}: not a section that runs in a child process")


def _child_argv(argv: list[str]) -> list[str]:
    """argv minus the parent-only options (--section/--section-dir are added per child)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--section", "--section-dir", "--json"):
            skip = True
            continue
        if a.startswith(("--section=", "--section-dir=", "--json=")):
            continue
        out.append(a)
    return out


def run_section_child(args) -> int:
    """Inside a child: one section, its result written to SECTION_DIR/NAME.result.json."""
    d = Path(args.section_dir)
    progress = Progress(d / f"{args.section}.progress.json")
    t0 = time.perf_counter()
    if args.on_cpu:
        import torch

        torch.set_num_threads(1)  # toy sizes: more threads only oversubscribe a shared machine
    res = IN_PROCESS[args.section](args, progress)
    res["seconds"] = round(time.perf_counter() - t0, 2)
    _write_json(d / f"{args.section}.result.json", res)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        if args.section is not None:
            return run_section_child(args)
        doc = check(args)
    except CheckError as e:
        print(f"gpu_check: error: {e}", file=sys.stderr)
        return 2
    json_path = Path(args.json) if args.json else out_dir(args) / "gpu_check.json"
    _write_json(json_path, doc)
    print(table(doc))
    print(f"results: {json_path}  (exit {doc['exit_code']})")
    return doc["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
