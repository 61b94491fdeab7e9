"""Calibration statistics for GPTQ and AWQ-lite: input Hessians and activation RMS per matmul.

GPTQ minimises each layer's output error tr(ΔW H ΔWᵀ) with H = Σ xxᵀ over
the inputs x that the layer actually sees; AWQ-lite ranks input columns by
their RMS activation. Both come from one pass of the trained model over a few
training batches: the model (eval mode, depth recurrence on, no grad) calls an
observer with the input of every matmul, named in the record's unbanked
naming, once per *application*, so a looped layer accumulates every pass
through it. The tied head's "input" is the final-norm output (`tok_emb.weight`).
c_q, c_k and c_v read the same normalized input, so the model reports it once
under c_q and the three names share one statistic.

Hessians are Σ XᵀX over all tokens divided by the number of batches (the
record's normalisation); act_rms_j = sqrt(Σ x_j² / rows). Everything is
returned on the CPU in fp32. This runs inside the training wallclock budget
(the GPTQ reserve): the training loop calls `collect_hessians` on batches from
`pgolf.loader.CalibrationSampler` (random whole windows of the training shards, as
the record's shuffled loader draws them) and writes `calibration.pt` with
`save_calibration`; `pgolf quantize` reads it back with `load_calibration`.

    collect_hessians(model, batches) -> (hessians, act_rms)
    save_calibration(path, hessians, act_rms, seconds) / load_calibration(path)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import torch

from pgolf.checkpoint import atomic_save
from pgolf.errors import DataError

CALIBRATION_FORMAT = "pgolf-calibration"
CALIBRATION_VERSION = 1

SHARED_INPUT = {".attn.c_q.weight": (".attn.c_k.weight", ".attn.c_v.weight")}


class HessianAccumulator:
    """Running Σ XᵀX, Σ x² and row counts per weight name; `observe` is the model's observer callback."""

    def __init__(self, accum_dtype: torch.dtype = torch.float32) -> None:
        self.accum_dtype = accum_dtype
        self.xtx: dict[str, torch.Tensor] = {}
        self.sq_sum: dict[str, torch.Tensor] = {}
        self.num_rows: dict[str, int] = {}
        self.num_calls: dict[str, int] = {}

    def observe(self, weight_name: str, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).to(self.accum_dtype)
        if weight_name not in self.xtx:
            c = x.shape[1]
            self.xtx[weight_name] = torch.zeros(c, c, dtype=self.accum_dtype, device=x.device)
            self.sq_sum[weight_name] = torch.zeros(c, dtype=torch.float64, device=x.device)
            self.num_rows[weight_name] = 0
            self.num_calls[weight_name] = 0
        assert self.xtx[weight_name].shape[0] == x.shape[1], (weight_name, x.shape)
        self.xtx[weight_name].addmm_(x.T, x)
        self.sq_sum[weight_name] += x.double().square().sum(dim=0)
        self.num_rows[weight_name] += x.shape[0]
        self.num_calls[weight_name] += 1

    def result(self, num_batches: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(hessians, act_rms) on the CPU, fp32, with c_k/c_v entries copied from c_q."""
        assert num_batches > 0, "no calibration batches were run"
        hessians: dict[str, torch.Tensor] = {}
        act_rms: dict[str, torch.Tensor] = {}
        for name, xtx in self.xtx.items():
            H = (xtx.double() / num_batches).float().cpu()
            rms = (self.sq_sum[name] / max(self.num_rows[name], 1)).sqrt().float().cpu()
            names = [name]
            for suffix, shared in SHARED_INPUT.items():
                if name.endswith(suffix):
                    names += [name[: -len(suffix)] + other for other in shared]
            for n in names:
                hessians[n], act_rms[n] = H, rms
        return hessians, act_rms


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def collect_hessians(model: torch.nn.Module, batches: Iterable[torch.Tensor],
                     accum_dtype: torch.dtype = torch.float32
                     ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Run `model` on each token batch [B, T] and return (hessians [c, c], act_rms [c]) per weight name.

    The model is put in eval mode with looping on for the pass and restored
    afterwards. Batches are moved to the model's device. The forward runs in the
    model's own dtypes without autocast, as the seed calibrates: a model cast by
    its device policy (`cast_model`: bf16 embedding, hence a bf16 residual stream
    and bf16 matmuls on the record's policy) gives the seed's inputs; the
    statistics are fp32.
    """
    device = _model_device(model)
    was_training = model.training
    was_looping = getattr(model, "looping", None)
    acc = HessianAccumulator(accum_dtype)
    num_batches = 0
    model.eval()
    if was_looping is not None:
        model.set_looping(True)
    try:
        with torch.no_grad(), model.observe(acc.observe):
            for ids in batches:
                model(ids.to(device=device, dtype=torch.long, non_blocking=True))
                num_batches += 1
    finally:
        if was_looping is not None:
            model.set_looping(was_looping)
        model.train(was_training)
    return acc.result(num_batches)


def save_calibration(path: str | os.PathLike, hessians: dict[str, torch.Tensor], act_rms: dict[str, torch.Tensor],
                     seconds: float) -> None:
    """Write RUN/calibration.pt: plain tensors and numbers, loadable with weights_only=True (atomic rename)."""

    atomic_save({"format": CALIBRATION_FORMAT, "version": CALIBRATION_VERSION, "seconds": float(seconds),
                 "hessians": {k: v.detach().cpu() for k, v in hessians.items()},
                 "act_rms": {k: v.detach().cpu() for k, v in act_rms.items()}}, path)


def load_calibration(path: str | os.PathLike) -> dict:
    """{"hessians", "act_rms", "seconds"} from a calibration file (DataError when missing or not one)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no calibration file (train collects it inside the training budget)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: report it, never unpickle code
        raise DataError(f"{path}: unreadable calibration file ({type(e).__name__})") from None
    # The format tag is optional: the documented layout is the three keys alone.
    if (not isinstance(obj, dict) or not isinstance(obj.get("hessians"), dict)
            or obj.get("format", CALIBRATION_FORMAT) != CALIBRATION_FORMAT):
        raise DataError(f"{path}: not a pgolf calibration file")
    if obj.get("version", CALIBRATION_VERSION) != CALIBRATION_VERSION:
        raise DataError(f"{path}: calibration version {obj.get('version')} (expected {CALIBRATION_VERSION})")
    return {"hessians": obj["hessians"], "act_rms": obj.get("act_rms") or {},
            "seconds": float(obj.get("seconds", 0.0))}
