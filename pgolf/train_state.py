"""A training run's resumable state: what `checkpoint.pt` holds, how it is written, refused and restored.

The command line's runs keep one: the loop writes it every `train.checkpoint_every` steps, at a
non-finite loss (the last finite state, for inspection) and at the end, and `pgolf train --resume`
continues from it bit-exactly (the RNG states included). A packed record trains once inside its
clock and never resumes, so it trains with `checkpoints=False`: `pgolf.train` imports this module
by name only when checkpoints are kept, and the packed file leaves it out.

The file is a plain dict of tensors and primitives (`torch.load(weights_only=True)` reads it back,
so loading never runs pickled code), tagged with its format and version.
"""

from __future__ import annotations

import json
import os
import random
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pgolf.checkpoint import FORMAT_VERSION, atomic_save, cpu_state_dict, load_weights_only
from pgolf.config import RunConfig
from pgolf.distributed import barrier, init_distributed, is_main
from pgolf.errors import ArtifactError, ConfigError, TrainingError
from pgolf.rundir import RunDir

if TYPE_CHECKING:
    from pgolf.train import _Run

TRAIN_STATE_FORMAT = "pgolf-train-state"


# --------------------------------------------------------------------------- the run's state
def snapshot(run: _Run, loader_state: dict, weights: dict | None = None) -> dict[str, Any]:
    """The resumable state of `run`; a collective (the optimizer gathers its shards)."""
    return {"config": run.cfg.to_json(), "world_size": run.dist.world_size, "step": run.step,
            "elapsed_s": run.clock.elapsed_s(),
            "model": weights if weights is not None else cpu_state_dict(run.model),
            "ema": run.ema.state_dict() if run.ema is not None else None, "optimizers": run.opt.state_dict(),
            "loader": loader_state, "rewarm": run.rewarm.state(), "active_seq_len": run.active_seq_len,
            "looping": run.model.looping, "last_loss": run.last_loss, "rng": rng_state()}


def write(run: _Run, loader_state: dict, weights: dict | None = None) -> None:
    """RUN/checkpoint.pt from every rank's state (rank 0 writes)."""
    state = snapshot(run, loader_state, weights)
    if is_main():
        save_train_state(run.ckpt_path, state)
    barrier()


def read_for_resume(cfg: RunConfig, run_dir: RunDir) -> dict[str, Any]:
    """RUN/checkpoint.pt, refused unless it was written by this config and this world size."""
    path = run_dir.checkpoint
    if not path.exists():
        raise TrainingError(f"{path}: no checkpoint to resume from")
    saved = load_train_state(path)
    diff = RunConfig.from_dict(json.loads(saved["config"])).diff(cfg)
    if diff:
        raise ConfigError(f"{path}: written with a different config ({', '.join(diff)} differ); "
                          f"resume with the run's own {run_dir.config} or start a new run")
    world_size = init_distributed().world_size
    if int(saved["world_size"]) != world_size:
        raise ConfigError(f"{path}: written by {saved['world_size']} processes, resuming with {world_size}; "
                          f"the loader cursor assumes the same world size")
    return saved


def restore(run: _Run, saved: dict[str, Any]) -> None:
    """Put `saved` back into a freshly built run: weights, optimizers, EMA, loader cursor, schedule, clock, RNG."""
    run.model.load_state_dict({k: v.to(run.dev) for k, v in saved["model"].items()}, strict=True)
    run.opt.load_state_dict(saved["optimizers"])
    if run.ema is not None:
        run.ema.load_state_dict(saved["ema"])
    run.loader.load_state(saved["loader"])
    run.rewarm.load_state(saved["rewarm"])
    run.model.set_looping(bool(saved["looping"]))
    run.step, run.active_seq_len, run.last_loss = int(saved["step"]), saved["active_seq_len"], saved["last_loss"]
    run.clock = type(run.clock)(run.dev, float(saved["elapsed_s"]))
    set_rng_state(saved["rng"])
    run.log.event("resume", step=run.step, elapsed_s=float(saved["elapsed_s"]))


# --------------------------------------------------------------------------- the file
_PRIMITIVES = (int, float, str, bool, type(None))


def _check_weights_only(obj: Any, where: str) -> None:
    """Only what `torch.load(weights_only=True)` reads back: tensors, primitives and containers of them."""
    if isinstance(obj, (torch.Tensor, *_PRIMITIVES)):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"train state {where}: key {k!r} is a {type(k).__name__}, need str or int")
            _check_weights_only(v, f"{where}.{k}")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_weights_only(v, f"{where}[{i}]")
        return
    raise TypeError(f"train state {where}: {type(obj).__name__} cannot be loaded with weights_only=True")


def save_train_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """A resumable training state (tensors, numbers, strings, nested dicts/lists), written atomically."""
    _check_weights_only(state, "state")
    atomic_save({"format": TRAIN_STATE_FORMAT, "version": FORMAT_VERSION, "state": state}, path)


def load_train_state(path: str | os.PathLike) -> dict[str, Any]:
    obj = load_weights_only(path)
    if not isinstance(obj, dict) or obj.get("format") != TRAIN_STATE_FORMAT:
        raise ArtifactError(f"{path}: not a pgolf training state")
    if obj.get("version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: training state version {obj.get('version')}, this pgolf reads {FORMAT_VERSION}")
    return obj["state"]



# --------------------------------------------------------------------------- RNG state (resume is bit-exact)
def rng_state() -> dict[str, Any]:
    """Python, numpy and torch generator states in weights_only-loadable form."""
    version, keys, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {"python": [version, list(keys), gauss],
             "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss),
                       float(np_gauss)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():  # device plumbing: CUDA generators exist only with a GPU (not a policy)
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    name, keys_t, pos, has_gauss, gauss_np = state["numpy"]
    np.random.set_state((name, keys_t.numpy().astype(np.uint32), pos, has_gauss, gauss_np))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
