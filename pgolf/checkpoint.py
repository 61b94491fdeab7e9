"""Model files, and the bridge to the record's own state-dict naming.

pgolf keeps its matrices in four banks (`qo_bank`, `kv_bank`, `mlp_up_bank`,
`mlp_down_bank`), exactly as the record's `GPT` does, so a banked pgolf state
dict and the record's `final_model.pt` (its `base_model.state_dict()`) use the
same names. Quantization works on the *unbanked* naming the record produces with
`_unbank_state_dict`: one 2-D tensor per layer and projection,

    blocks.{i}.attn.c_q.weight   qo_bank[i]        blocks.{i}.attn.proj.weight  qo_bank[L+i]
    blocks.{i}.attn.c_k.weight   kv_bank[i]        blocks.{i}.attn.c_v.weight   kv_bank[L+i]
    blocks.{i}.mlp.fc.weight     mlp_up_bank[i]    blocks.{i}.mlp.proj.weight   mlp_down_bank[i]

with every other tensor passed through under its own name. `unbank_state_dict`
and `rebank_state_dict` are exact inverses.

Files are plain dicts of tensors and primitives written with `torch.save` and read
with `torch.load(weights_only=True)`, so loading never runs pickled code. A model
file stores its `ModelConfig` next to the weights; loading into a config whose
shapes differ raises a `ConfigError` naming the fields that differ.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgolf.config import ModelConfig, RunConfig
from pgolf.errors import ArtifactError, ConfigError
from pgolf.model import GPT

MODEL_FORMAT = "pgolf-model"
FORMAT_VERSION = 1

# (unbanked suffix, bank, row offset in units of num_layers)
_BANK_LAYOUT = (
    ("attn.c_q.weight", "qo_bank", 0),
    ("attn.proj.weight", "qo_bank", 1),
    ("attn.c_k.weight", "kv_bank", 0),
    ("attn.c_v.weight", "kv_bank", 1),
    ("mlp.fc.weight", "mlp_up_bank", 0),
    ("mlp.proj.weight", "mlp_down_bank", 0),
)
_BANKS = ("qo_bank", "kv_bank", "mlp_up_bank", "mlp_down_bank")
_UNBANKED_RE = re.compile(r"^blocks\.(\d+)\.(attn\.(?:c_q|c_k|c_v|proj)|mlp\.(?:fc|proj))\.weight$")


def _cpu(t: torch.Tensor) -> torch.Tensor:
    """Detached CPU tensor; meta tensors stay meta so shapes can be checked without memory."""
    t = t.detach()
    return t if t.is_meta else t.cpu()


def _model_cfg(cfg: ModelConfig | RunConfig) -> ModelConfig:
    return cfg.model if isinstance(cfg, RunConfig) else cfg


# --------------------------------------------------------------------------- (un)banking
def unbank_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig | RunConfig) -> dict[str, torch.Tensor]:
    """Banked pgolf/record state dict -> the record's per-layer naming (tensors detached, on CPU, copied)."""
    num_layers = _model_cfg(cfg).num_layers
    out: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        if name not in _BANKS:
            out[name] = _cpu(t).clone()
    for suffix, bank, offset in _BANK_LAYOUT:
        t = _cpu(sd[bank])
        if t.shape[0] != num_layers * (2 if bank in ("qo_bank", "kv_bank") else 1):
            raise ConfigError(f"model.num_layers: {bank} has {t.shape[0]} rows, config has {num_layers} layers")
        for i in range(num_layers):
            out[f"blocks.{i}.{suffix}"] = t[offset * num_layers + i].clone()
    return out


def rebank_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig | RunConfig) -> dict[str, torch.Tensor]:
    """The record's per-layer naming -> banked state dict (the inverse of `unbank_state_dict`)."""
    num_layers = _model_cfg(cfg).num_layers
    found = {int(m.group(1)) for name in sd if (m := _UNBANKED_RE.match(name))}
    if found != set(range(num_layers)):
        raise ConfigError(f"model.num_layers: state dict has per-layer matrices for layers "
                          f"{_ranges(sorted(found))}, config has {num_layers} layers")
    out = {name: t for name, t in sd.items() if not _UNBANKED_RE.match(name)}
    rows: dict[str, list] = {bank: [None] * (num_layers * (2 if bank in ("qo_bank", "kv_bank") else 1))
                             for bank in _BANKS}
    for suffix, bank, offset in _BANK_LAYOUT:
        for i in range(num_layers):
            name = f"blocks.{i}.{suffix}"
            if name not in sd:
                raise ConfigError(f"model: state dict lacks {name}")
            rows[bank][offset * num_layers + i] = sd[name]
    for bank in _BANKS:
        shapes = {tuple(t.shape) for t in rows[bank]}
        if len(shapes) != 1:
            raise ConfigError(f"model: {bank} rows have different shapes {sorted(shapes)}")
        out[bank] = torch.stack([_cpu(t) for t in rows[bank]])
    return out


def _ranges(xs: list[int]) -> str:
    return f"{xs[0]}..{xs[-1]}" if xs and xs == list(range(xs[0], xs[-1] + 1)) else str(xs)


def _is_unbanked(sd: dict[str, Any]) -> bool:
    return "qo_bank" not in sd and any(_UNBANKED_RE.match(name) for name in sd)


# --------------------------------------------------------------------------- shape checks
def _shape_fields(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """Config facts readable from a banked state dict's shapes (the same facts for both sides of a check)."""
    def dim(name: str, axis: int):
        return shapes[name][axis] if name in shapes and len(shapes[name]) > axis else None

    model_dim = dim("tok_emb.weight", 1)
    num_heads = dim("blocks.0.attn.q_gain", 0)
    kv_rows = dim("kv_bank", 1)
    head_dim = model_dim // num_heads if model_dim and num_heads else None
    hidden = dim("mlp_up_bank", 1)
    return {
        "vocab_size": dim("tok_emb.weight", 0),
        "model_dim": model_dim,
        "num_layers": dim("qo_bank", 0) // 2 if dim("qo_bank", 0) else None,
        "num_heads": num_heads,
        "num_kv_heads": kv_rows // head_dim if kv_rows and head_dim else None,
        "mlp_mult": hidden / model_dim if hidden and model_dim else None,
        "gate_window": dim("blocks.0.attn.attn_gate_w", 1) or dim("smear_gate.weight", 1),
        "sparse_attn_gate": "blocks.0.attn.attn_gate_w" in shapes,
        "smear_gate": "smear_gate.weight" in shapes,
        "skip_gates": "skip_gates" in shapes,
        "asym_logit_rescale": "softcap_pos" in shapes,
        "parallel_start_layer": "parallel_resid_lambdas" in shapes,
        "num_loops/loop_start/loop_end (skip_weights rows)": dim("skip_weights", 0),
    }


def expected_shapes(cfg: ModelConfig | RunConfig) -> dict[str, tuple[int, ...]]:
    """Banked state-dict names and shapes of a GPT built from `cfg` (built on the meta device: free)."""
    with torch.device("meta"):
        model = GPT(_model_cfg(cfg))
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def check_state_dict_shapes(sd: dict[str, torch.Tensor], cfg: ModelConfig | RunConfig, source: str) -> None:
    """ConfigError naming the config fields that explain any missing, extra or reshaped tensor."""
    want = expected_shapes(cfg)
    have = {name: tuple(t.shape) for name, t in sd.items()}
    if want == have:
        return
    fields_want, fields_have = _shape_fields(want), _shape_fields(have)
    diffs = [f"{k} (file {fields_have[k]}, config {fields_want[k]})"
             for k in fields_want if fields_want[k] != fields_have[k]]
    if not diffs:  # shapes differ in a way the field map does not cover: name the tensors
        bad = sorted(set(want) ^ set(have)) + sorted(k for k in set(want) & set(have) if want[k] != have[k])
        diffs = [f"tensors {', '.join(bad[:4])}"]
    raise ConfigError(f"{source}: weights do not fit the model config: model.{'; model.'.join(diffs)}")


# --------------------------------------------------------------------------- model files
def save_model(path: str | os.PathLike, model: GPT) -> None:
    """Banked weights (CPU) plus the ModelConfig, atomically."""
    payload = {
        "format": MODEL_FORMAT,
        "version": FORMAT_VERSION,
        "model_config": dataclasses.asdict(model.cfg),
        "state_dict": {name: t.detach().cpu() for name, t in model.state_dict().items()},
    }
    atomic_save(payload, path)


def load_model(path: str | os.PathLike, cfg: ModelConfig | RunConfig | None = None) -> GPT:
    """A GPT (CPU, fp32: a bf16 tensor in the file is upcast) from a pgolf model file, looping off.

    Also accepts a bare state dict (the record's banked `final_model.pt`, or its unbanked
    naming); those carry no config, so `cfg` is then required.
    """
    obj = load_weights_only(path)
    if isinstance(obj, dict) and obj.get("format") == MODEL_FORMAT:
        if obj.get("version") != FORMAT_VERSION:
            raise ArtifactError(f"{path}: model file version {obj.get('version')}, this pgolf reads {FORMAT_VERSION}")
        stored = _config_from_dict(obj["model_config"], path)
        model_cfg = _model_cfg(cfg) if cfg is not None else stored
        sd = obj["state_dict"]
    elif isinstance(obj, dict) and all(isinstance(t, torch.Tensor) for t in obj.values()) and obj:
        if cfg is None:
            raise ConfigError(f"{path}: a bare state dict stores no model config; pass one (e.g. --preset)")
        model_cfg = _model_cfg(cfg)
        sd = obj
    else:
        raise ArtifactError(f"{path}: not a pgolf model file or a state dict")
    return _model_from_state_dict(sd, model_cfg, str(path))


def _config_from_dict(d: dict[str, Any], path) -> ModelConfig:
    try:
        return ModelConfig(**d)
    except (TypeError, ConfigError) as e:
        raise ConfigError(f"{path}: stored model config is invalid: {e}") from None


def _model_from_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig, source: str) -> GPT:
    if _is_unbanked(sd):
        sd = rebank_state_dict(sd, cfg)
    check_state_dict_shapes(sd, cfg, source)
    with torch.device("meta"):
        model = GPT(cfg)
    model = model.to_empty(device="cpu")
    # load_state_dict copies into the fp32 parameters, so a bf16 tok_emb (as the record stores it) is upcast.
    model.load_state_dict(sd, strict=True)
    return model


def export_record_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The model's weights in the record's unbanked naming (what its quantizer consumes)."""
    return unbank_state_dict(model.state_dict(), model.cfg)


def import_record_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig | RunConfig) -> GPT:
    """A GPT from a record state dict: unbanked (`_unbank_state_dict`) or banked (its `final_model.pt`)."""
    return _model_from_state_dict(dict(sd), _model_cfg(cfg), "record state dict")


# --------------------------------------------------------------------------- seeds and file helpers
def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (the record's SEED)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of `model`'s state dict."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """Write to a sibling temp file, then rename, so a kill mid-write never leaves a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_weights_only(path: str | os.PathLike) -> Any:
    """A torch file read with `weights_only=True`; ArtifactError in one line when it cannot be."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, ...: one line, no traceback
        raise ArtifactError(f"{path}: cannot be read as a weights-only torch file ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:120] if str(e) else 'no detail'})") from None
