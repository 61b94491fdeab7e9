"""Mixed-precision quantization of a whole (unbanked) state dict into a QState.

Each tensor gets the cheapest treatment that keeps its error small, chosen by
name and size as the record does:

    tok_emb.weight                      GPTQ int7, SDClip σ 14   (tied head: Hessian of the final-norm output)
    blocks.{i}.attn.{c_q,c_k,c_v,proj}  GPTQ int6, SDClip σ 13
    blocks.{i}.mlp.{fc,proj}            GPTQ int6, SDClip σ 11.5
    other matrices > passthrough size   GPTQ int6 with the attention σ (the record's 12.85 matched no tensor)
    *.attn_gate_w                       int8 per row, fp16 scale max|row|/127
    numel <= passthrough_max_numel      fp16 passthrough, as is every non-matrix (non-float tensors unchanged)

then AWQ-lite picks the globally most salient 64-column group(s) to quantize
at int8 inside GPTQ, and LQER adds a rank-4 INT2/INT4 correction to the 3
tensors whose realized error ‖W - Ŵ‖_F is largest (where a correction buys the most).

QState layout (what the artifact stores; every tensor on the CPU):

    tensors[name]                  passthrough: fp16 copy (non-float tensors as they were)
    tensors[name + ".gq"]          gate: int8 [rows, cols]
    tensors[name + ".gs"]          gate: fp16 [rows] scale
    tensors[name + ".q"]           GPTQ: int8 [rows, cols] symbols, |q| <= R (<= 127 in AWQ columns)
    tensors[name + ".scale"]       GPTQ: fp16 [rows] SDClip scale
    tensors[name + ".awqg_s_hi"]   AWQ-lite: fp16 [rows] scale of the protected columns
    tensors[name + ".lqA_a"]       LQER: int8 [rows, r] in [-2, 1]
    tensors[name + ".lqAs_a"]      LQER: fp16 scalar scale of A
    tensors[name + ".lqB_a"]       LQER: int8 [r, cols] in [-8, 7]
    tensors[name + ".lqBs_a"]      LQER: fp16 [ceil(r·cols/group)] group scales of the flattened B

    meta = {"format": "pgolf.qstate", "version": 1,
            "qconfig": {QuantConfig field: value},
            "order": [tensor names in state-dict order],
            "entries": {name: {"category": "gptq (int7)+awqgrpint8+lqer_asym", "kind": "gptq",
                               "shape": [rows, cols], "dtype": "float32", "bits": 7, "clip_sigmas": 14.0,
                               "awq": {"starts": [...], "group_size": 64, "bits": 8} | None,
                               "lqer": {"rank": 4, "group": 64, "a_bits": 2, "b_bits": 4} | None}}}

`kind` is one of passthrough | gate_int8 | gptq; bits/clip_sigmas are None
where they do not apply. The dequantized weight is q·s (q·s_hi in AWQ
columns) plus Â·B̂ where LQER is present.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from typing import Callable

import torch

from pgolf.config import QuantConfig
from pgolf.errors import ArtifactError, DataError
from pgolf.quant.gptq import awq_select_groups, dequantize, fp16_scale, gptq_quantize, group_mask
from pgolf.quant.lqer import LqerFactors, lqer_dequantize, lqer_fit, lqer_pack_asym, lqer_select

QSTATE_FORMAT = "pgolf.qstate"
QSTATE_VERSION = 1

QState = dict  # {"tensors": dict[str, Tensor], "meta": dict}


def tensor_role(name: str) -> str:
    """embed | attn | mlp | gate | matrix: which quantization settings a tensor name gets."""
    if name.endswith("attn_gate_w"):
        return "gate"
    if "tok_emb" in name:
        return "embed"
    if ".mlp." in name:
        return "mlp"
    if ".attn." in name:
        return "attn"
    return "matrix"


def bits_and_clip(name: str, qcfg: QuantConfig) -> tuple[int, float]:
    """(bits, SDClip sigmas) of a GPTQ'd tensor."""
    role = tensor_role(name)
    if role == "embed":
        return qcfg.embed_bits, qcfg.embed_clip_sigmas
    if role == "mlp":
        return qcfg.matrix_bits, qcfg.mlp_clip_sigmas
    return qcfg.matrix_bits, qcfg.attn_clip_sigmas


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def quantize_gate_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row: (int8 [rows, cols], fp16 scale max|row|/127 [rows])."""
    W = w.float()
    s = fp16_scale(W.abs().amax(dim=1) / 127.0)
    q = torch.clamp(torch.round(W / s.float().view(-1, 1)), -127, 127).to(torch.int8)
    return q, s


def quantize_state_dict(sd_unbanked: dict[str, torch.Tensor], hessians: dict[str, torch.Tensor],
                        act_rms: dict[str, torch.Tensor] | None, qcfg: QuantConfig,
                        log: Callable[[str], None] | None = None) -> QState:
    """Quantize every tensor of an unbanked state dict; see the module docstring for the layout.

    GPTQ runs on each tensor's own device (CUDA when the state dict is there).
    `hessians` must hold a [cols, cols] matrix for every GPTQ'd tensor;
    `act_rms` (may be None or partial) feeds AWQ-lite only.
    """
    act_rms = act_rms or {}
    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, dict] = {}
    gptq_names: list[str] = []
    for name, t in sd_unbanked.items():
        t = t.detach()
        entry = {"shape": list(t.shape), "dtype": _dtype_name(t.dtype), "bits": None, "clip_sigmas": None,
                 "awq": None, "lqer": None}
        entries[name] = entry
        if qcfg.gate_int8 and tensor_role(name) == "gate" and t.is_floating_point() and t.ndim == 2:
            tensors[name + ".gq"], tensors[name + ".gs"] = (x.cpu() for x in quantize_gate_int8(t))
            entry.update(kind="gate_int8", category="gate int8/row", bits=8)
        elif not t.is_floating_point() or t.numel() <= qcfg.passthrough_max_numel or t.ndim != 2:
            tensors[name] = t.to(torch.float16).cpu() if t.is_floating_point() else t.cpu().clone()
            entry.update(kind="passthrough", category=f"passthrough ({_dtype_name(tensors[name].dtype)})")
        else:
            H = _stat_for(hessians, name)
            if H is None or tuple(H.shape) != (t.shape[1], t.shape[1]):
                got = "none" if H is None else f"shape {tuple(H.shape)}"
                raise DataError(f"calibration: Hessian for {name} must be [{t.shape[1]}, {t.shape[1]}], got {got}")
            if not bool(torch.isfinite(H).all()):
                raise DataError(f"calibration: Hessian for {name} has non-finite values")
            if not bool(torch.isfinite(t).all()):
                raise DataError(f"state dict: tensor {name} has non-finite values")
            bits, clip = bits_and_clip(name, qcfg)
            entry.update(kind="gptq", bits=bits, clip_sigmas=clip)
            gptq_names.append(name)

    awq_starts = _awq_plan(sd_unbanked, gptq_names, entries, act_rms, qcfg)
    error_norms: dict[str, float] = {}
    for name in gptq_names:
        W = sd_unbanked[name].detach()
        entry = entries[name]
        starts = awq_starts.get(name)
        mask = group_mask(starts, qcfg.awq_group_size, W.shape[1]) if starts else None
        H = _stat_for(hessians, name).to(W.device)
        res = gptq_quantize(W.float(), H, entry["bits"], entry["clip_sigmas"],
                            block_size=qcfg.gptq_block_size, damp=qcfg.gptq_damp,
                            protected_cols=mask, protected_bits=qcfg.awq_bits)
        tensors[name + ".q"], tensors[name + ".scale"] = res.q.cpu(), res.scale.cpu()
        category = f"gptq (int{entry['bits']})"
        if res.scale_hi is not None:
            tensors[name + ".awqg_s_hi"] = res.scale_hi.cpu()
            entry["awq"] = {"starts": starts, "group_size": qcfg.awq_group_size, "bits": qcfg.awq_bits}
            category += f"+awqgrpint{qcfg.awq_bits}"
        entry["category"] = category
        if qcfg.lqer_enabled:
            W_hat = dequantize(res.q, res.scale, res.scale_hi, mask.to(W.device) if mask is not None else None)
            error_norms[name] = float((W.float() - W_hat).norm())
        if log is not None:
            log(f"quant: {name} {category} {tuple(W.shape)}")

    if qcfg.lqer_enabled:
        for name in lqer_select(error_norms, qcfg.lqer_top_k):
            W = sd_unbanked[name].detach().float()
            E = W - _gptq_reconstruction(tensors, name, entries[name]).to(W.device)
            A, B = lqer_fit(E, qcfg.lqer_rank)
            f = lqer_pack_asym(A, B, qcfg.lqer_group, qcfg.lqer_a_bits, qcfg.lqer_b_bits)
            tensors[name + ".lqA_a"], tensors[name + ".lqAs_a"] = f.qA.cpu(), f.sA.cpu()
            tensors[name + ".lqB_a"], tensors[name + ".lqBs_a"] = f.qB.cpu(), f.sB.cpu()
            entries[name]["lqer"] = {"rank": int(A.shape[1]), "group": qcfg.lqer_group,
                                     "a_bits": qcfg.lqer_a_bits, "b_bits": qcfg.lqer_b_bits}
            entries[name]["category"] += "+lqer_asym"

    meta = {"format": QSTATE_FORMAT, "version": QSTATE_VERSION, "qconfig": dataclasses.asdict(qcfg),
            "order": list(sd_unbanked), "entries": entries}
    return {"tensors": tensors, "meta": meta}


def _stat_for(stats: dict[str, torch.Tensor], name: str) -> torch.Tensor | None:
    """The statistic of `name`; c_k and c_v fall back to c_q's, whose input they share."""
    if name in stats:
        return stats[name]
    for shared in (".attn.c_k.weight", ".attn.c_v.weight"):
        if name.endswith(shared):
            return stats.get(name[: -len(shared)] + ".attn.c_q.weight")
    return None


def _awq_plan(sd: dict[str, torch.Tensor], gptq_names: list[str], entries: dict[str, dict],
              act_rms: dict[str, torch.Tensor], qcfg: QuantConfig) -> dict[str, list[int]]:
    """AWQ-lite: {name: protected group starts} over the GPTQ'd tensors with activation stats."""
    if not qcfg.awq_enabled or qcfg.awq_top_k <= 0:
        return {}
    candidates = {}
    for name in gptq_names:
        rms = _stat_for(act_rms, name)
        W = sd[name]
        if rms is None or entries[name]["bits"] >= qcfg.awq_bits or rms.numel() != W.shape[1]:
            continue
        candidates[name] = (W, rms)
    return awq_select_groups(candidates, qcfg.awq_group_size, qcfg.awq_top_k)


def _need(tensors: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    t = tensors.get(key)
    if t is None:
        raise ArtifactError(f"qstate: tensor {key} is missing")
    return t


def _gptq_reconstruction(tensors: dict[str, torch.Tensor], name: str, entry: dict) -> torch.Tensor:
    """q·s (with s_hi in the AWQ columns), fp32 on the CPU."""
    q, s = _need(tensors, name + ".q"), _need(tensors, name + ".scale")
    awq = entry.get("awq")
    if awq:
        mask = group_mask(awq["starts"], awq["group_size"], q.shape[1])
        return dequantize(q, s, _need(tensors, name + ".awqg_s_hi"), mask)
    return dequantize(q, s)


def dequantize_state_dict(qstate: QState) -> dict[str, torch.Tensor]:
    """Float state dict with the original names, order, shapes and dtypes (CPU tensors)."""
    meta, tensors = qstate["meta"], qstate["tensors"]
    if meta.get("format") != QSTATE_FORMAT or meta.get("version") != QSTATE_VERSION:
        raise ArtifactError(f"qstate: format {meta.get('format')!r} v{meta.get('version')} is not "
                            f"{QSTATE_FORMAT} v{QSTATE_VERSION}")
    out: dict[str, torch.Tensor] = {}
    for name in meta["order"]:
        entry = meta["entries"][name]
        dtype = getattr(torch, entry["dtype"])
        kind = entry["kind"]
        if kind == "passthrough":
            W = _need(tensors, name)
        elif kind == "gate_int8":
            W = dequantize(_need(tensors, name + ".gq"), _need(tensors, name + ".gs"))
        elif kind == "gptq":
            W = _gptq_reconstruction(tensors, name, entry)
            lq = entry.get("lqer")
            if lq:
                f = LqerFactors(_need(tensors, name + ".lqA_a"), _need(tensors, name + ".lqAs_a"),
                                _need(tensors, name + ".lqB_a"), _need(tensors, name + ".lqBs_a"), lq["group"])
                W = W + lqer_dequantize(f)
        else:
            raise ArtifactError(f"qstate: tensor {name} has unknown kind {kind!r}")
        if list(W.shape) != entry["shape"]:
            raise ArtifactError(f"qstate: tensor {name} decodes to shape {list(W.shape)}, meta says {entry['shape']}")
        out[name] = W.to(dtype)
    return out


def summary_lines(qstate: QState) -> list[str]:
    """'Quantized weights:' then one line per category with the layer-collapsed names, as the record logs."""
    categories: dict[str, set[str]] = defaultdict(set)
    for name, entry in qstate["meta"]["entries"].items():
        categories[entry["category"]].add(re.sub(r"blocks\.\d+", "blocks", name))
    lines = ["Quantized weights:"]
    for category in sorted(categories):
        lines.append(f"  {category}: {', '.join(sorted(categories[category]))}")
    return lines


def summary_by_category(qstate: QState) -> dict[str, list[str]]:
    """{category: [full tensor names in state-dict order]}."""
    out: dict[str, list[str]] = defaultdict(list)
    for name in qstate["meta"]["order"]:
        out[qstate["meta"]["entries"][name]["category"]].append(name)
    return dict(out)
