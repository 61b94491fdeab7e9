"""Per-document batched LoRA: one independent low-rank adapter per document row.

Score-first TTT adapts the frozen base model to each document separately. A
batch of `bsz` documents runs as one `[bsz, T]` forward, so every adapted
projection holds a stack of `bsz` adapters and row b of the activations only
ever meets adapter b:

    y_b = W x_b + (alpha / rank) * B_b (A_b x_b)        A_b: [rank, in], B_b: [out, rank]

A ~ U(-1/sqrt(in), 1/sqrt(in)) and B = 0, so a fresh adapter leaves the model
unchanged. Sites (see `GPT`'s adapters protocol): the enabled per-block sites
of `TTTConfig.lora_sites` (K, O and MLP always; Q and V unless masked) in every
block-application slot, plus the LM head. Because the base model is frozen and
AdamW is elementwise, a row's adapter receives gradient only from its own
document.

Peer routing (the ensemble): `peer_index` is a long tensor whose i-th entry
names the adapter row that activation row i uses, so `peer_index = [2, 0, 1]`
runs row 0 through doc 2's adapters. It is an attribute of one adapter set, not
a process-wide switch, and it also selects a subset of rows (the documents still
active in a chunk) when its length is smaller than `bsz`.

`snapshot()` returns detached copies (`FrozenLoRA`) of finished documents'
adapters; the causal ensemble keeps them as peers while the live adapters are
reset and trained on the next batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pgolf.config import ModelConfig, TTTConfig

HEAD = "head"


def site_dims(model_cfg: ModelConfig, site: str) -> tuple[int, int]:
    """(in_features, out_features) of the projection an adapter at `site` is added to."""
    d = model_cfg.model_dim
    dims = {"q": (d, d), "k": (d, model_cfg.kv_dim), "v": (d, model_cfg.kv_dim), "o": (d, d),
            "mlp": (d, d), HEAD: (d, model_cfg.vocab_size)}
    return dims[site]


def _key(site: str, slot: int) -> str:
    return HEAD if site == HEAD else f"{site}_{slot}"


def _apply(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor, scale: float,
           index: torch.Tensor | None) -> torch.Tensor:
    """Row-wise (x A^T) B^T * scale; `index` picks the adapter row of each activation row.

    The delta comes out in the dtype of the projection it is added to, `F.linear(x, W.to(x.dtype))`:
    x's dtype, or the autocast dtype under autocast. The adapters are cast to x (never x to the
    adapters), so `out + delta` never promotes: an fp32 delta on a bf16 K projection would hand
    attention a fp32 k beside bf16 q and v, which FlashAttention 3 rejects. With fp32 x and fp32
    adapters (CPU) the casts are no-ops.
    """
    if index is not None:
        a, b = a[index], b[index]
    assert x.shape[0] == a.shape[0], f"{x.shape[0]} activation rows for {a.shape[0]} adapters"
    lead = x.shape
    x3 = x.reshape(lead[0], -1, lead[-1])
    out = torch.bmm(torch.bmm(x3, a.to(x.dtype).transpose(1, 2)), b.to(x.dtype).transpose(1, 2)) * scale
    return out.reshape(*lead[:-1], b.shape[1])


class BatchedLoRA(nn.Module):
    """Adapters for `bsz` documents at every enabled site of `num_slots` block applications plus the head."""

    def __init__(self, model_cfg: ModelConfig, ttt_cfg: TTTConfig, bsz: int, num_slots: int,
                 device: torch.device | str | None = None, generator: torch.Generator | None = None):
        super().__init__()
        assert bsz >= 1 and num_slots >= 1
        self.bsz, self.num_slots, self.rank = bsz, num_slots, ttt_cfg.lora_rank
        self.scale = ttt_cfg.lora_alpha / ttt_cfg.lora_rank
        self.warm_start_a = ttt_cfg.warm_start_a
        self.sites = tuple(ttt_cfg.lora_sites)
        self.peer_index: torch.Tensor | None = None
        self._generator = generator
        self.a = nn.ParameterDict()
        self.b = nn.ParameterDict()
        # Creation order follows the seed (head first, then per slot) so a seeded generator
        # gives the same A for the same config.
        layout = [(HEAD, 0)] + [(site, slot) for slot in range(num_slots) for site in self.sites]
        for site, slot in layout:
            n_in, n_out = site_dims(model_cfg, site)
            key = _key(site, slot)
            self.a[key] = nn.Parameter(torch.empty(bsz, self.rank, n_in, device=device))
            self.b[key] = nn.Parameter(torch.zeros(bsz, n_out, self.rank, device=device))
        self.init_a()

    @torch.no_grad()
    def init_a(self) -> None:
        """Fresh A ~ U(+-1/sqrt(in)) for every adapter (drawn on the CPU so the draw is device-independent)."""
        for a in self.a.values():
            bound = 1.0 / math.sqrt(a.shape[-1])
            draw = torch.rand(a.shape, generator=self._generator, dtype=torch.float32)
            a.copy_((draw * 2 - 1) * bound)

    @torch.no_grad()
    def reset(self) -> None:
        """Start a new batch: B = 0 (the model is the base again); A carries over under warm start."""
        for b in self.b.values():
            b.zero_()
        if not self.warm_start_a:
            self.init_a()
        self.peer_index = None

    def delta(self, site: str, slot: int, x: torch.Tensor) -> torch.Tensor | None:
        key = _key(site, slot)
        if key not in self.a:
            return None
        return _apply(self.a[key], self.b[key], x, self.scale, self.peer_index)

    def snapshot(self, rows: torch.Tensor | None = None) -> "FrozenLoRA":
        """Detached copies of the adapters of `rows` (all rows if None), for use as frozen peers."""
        pick = (lambda t: t.detach()[rows].clone()) if rows is not None else (lambda t: t.detach().clone())
        return FrozenLoRA({k: pick(v) for k, v in self.a.items()}, {k: pick(v) for k, v in self.b.items()},
                          self.scale)

    def num_params_per_doc(self) -> int:
        return sum(p[0].numel() for p in self.parameters())


class FrozenLoRA:
    """Adapters of finished documents: plain tensors, no gradient, routed by `peer_index`."""

    def __init__(self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], scale: float):
        self.a, self.b, self.scale = a, b, scale
        self.peer_index: torch.Tensor | None = None

    @property
    def num_docs(self) -> int:
        return next(iter(self.a.values())).shape[0]

    def delta(self, site: str, slot: int, x: torch.Tensor) -> torch.Tensor | None:
        key = _key(site, slot)
        if key not in self.a:
            return None
        return _apply(self.a[key], self.b[key], x, self.scale, self.peer_index)

    @staticmethod
    def concat(parts: list["FrozenLoRA"]) -> "FrozenLoRA":
        """One pool holding the documents of several snapshots, rows in the given order."""
        assert parts
        if len(parts) == 1:
            return parts[0]
        keys = parts[0].a.keys()
        return FrozenLoRA({k: torch.cat([p.a[k] for p in parts]) for k in keys},
                          {k: torch.cat([p.b[k] for p in parts]) for k in keys}, parts[0].scale)
