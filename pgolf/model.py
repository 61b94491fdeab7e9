"""The record's transformer (#2014 / #2139): an 11-layer GQA U-Net with depth recurrence and parallel lanes.

Data flow of `GPT.forward` (every step is visible there):

    tokens -> tied embedding -> SmearGate (previous-token mix, never across a BOS)
           -> RMSNorm = x0 (kept: every block mixes it back in via resid_mix)
           -> encoder block applications, each output pushed on a skip stack
           -> decoder block applications; the first ones pop a skip (LIFO) and
              lerp it in through a sigmoid gate; from `parallel_start_layer` on
              the residual splits into two lanes (attention lane, MLP lane)
           -> mean of the lanes -> RMSNorm -> tied head -> softcap 30*tanh(z/30)

The execution order of physical layers is `layer_schedule()`: with looping on,
layers loop_start..loop_end run num_loops+1 times (the record: 0,1,2,
3,4,5,3,4,5,3,4,5, 6..10 = 17 applications), split in half into encoder and
decoder. A "slot" is one block application (its index in that order); TTT
adapters are per slot, the weights are per physical layer.

The matrices live in four parameter banks (`qo_bank`, `kv_bank`, `mlp_up_bank`,
`mlp_down_bank`) so the optimizer can shard them as 3-D tensors; everything else
keeps the record's parameter names. Two hooks serve later stages without
changing the math: `adapters.delta(site, slot, x)` adds test-time LoRA outputs,
and `with model.observe(fn)` reports the input of every matmul for GPTQ
calibration, named like the record's unbanked state dict.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from pgolf.attention import attention
from pgolf.config import ModelConfig
from pgolf.errors import ConfigError

BOS_ID = 1

Observer = Callable[[str, torch.Tensor], None]


class Adapters(Protocol):
    """Test-time adapters: a delta for the output of one projection, or None for no change."""

    def delta(self, site: str, slot: int, x: torch.Tensor) -> torch.Tensor | None: ...


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free RMSNorm over the last dimension (the record has no norm weights), in x's dtype.

    CUDA autocast in torch >= 2.12 computes rms_norm in fp32 (the record's torch 2.10 kept bf16); the cast
    back keeps q, k and the bf16 residual in the record's dtypes (a no-op in fp32)."""
    return F.rms_norm(x, (x.shape[-1],)).to(x.dtype)


def apply_partial_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rope_dims: int) -> torch.Tensor:
    """Rotate-half RoPE on the first `rope_dims` channels of each head; pairs are (i, i + rope_dims/2).

    The rotation direction follows the record (x1*cos + x2*sin, x2*cos - x1*sin) so that
    its checkpoints produce the same attention scores here.
    """
    if rope_dims == 0:
        return x
    half = rope_dims // 2
    x1, x2, rest = x[..., :half], x[..., half:rope_dims], x[..., rope_dims:]
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin, rest), dim=-1)


def rope_cos_sin(seq_len: int, rope_dims: int, base: float, device,
                 freq_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 cos/sin `[1, T, 1, rope_dims/2]` for absolute positions 0..T-1.

    The inverse frequencies are rounded through `freq_dtype` first: the record's `.bfloat16()` casts its
    rotary buffer, so its RoPE runs on bf16-rounded frequencies (positions and angles stay fp32)."""
    inv_freq = 1.0 / base ** (torch.arange(0, rope_dims, 2, dtype=torch.float32, device=device) / rope_dims)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq.to(freq_dtype).float())
    return angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]


def softcap(z: torch.Tensor, cap: float | torch.Tensor) -> torch.Tensor:
    return cap * torch.tanh(z / cap)


def looped_order(cfg: ModelConfig) -> list[int]:
    """Physical layers in execution order with depth recurrence on (no recurrence if num_loops == 0)."""
    if cfg.num_loops == 0:
        return list(range(cfg.num_layers))
    loop = list(range(cfg.loop_start, cfg.loop_end + 1))
    return list(range(cfg.loop_start)) + loop * (cfg.num_loops + 1) + list(range(cfg.loop_end + 1, cfg.num_layers))


def split_schedule(cfg: ModelConfig, looping: bool) -> tuple[list[int], list[int]]:
    """(encoder, decoder) physical layers; the record splits the unlooped stack at num_layers // 2."""
    if looping and cfg.num_loops > 0:
        order = looped_order(cfg)
        return order[: len(order) // 2], order[len(order) // 2:]
    half = cfg.num_layers // 2
    return list(range(half)), list(range(half, cfg.num_layers))


def num_skip_weights(cfg: ModelConfig) -> int:
    """Skip connections are sized for the looped schedule; unlooped runs use the first few."""
    encoder, decoder = split_schedule(cfg, looping=True)
    return min(len(encoder), len(decoder))


def parallel_lanes_enabled(cfg: ModelConfig) -> bool:
    """The record treats parallel_start_layer 0 as "off" (its env default); num_layers is off too."""
    return 0 < cfg.parallel_start_layer < cfg.num_layers


class CausalSelfAttention(nn.Module):
    """Per-layer attention parameters (q_gain, the sparse head gate) and the attention math.

    The projection matrices are passed in from the banks; `layer_idx` is the physical layer.
    """

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.rope_dims = cfg.rope_dims
        self.use_xsa = layer_idx >= cfg.num_layers - cfg.xsa_last_n
        self.gate_window = cfg.gate_window
        self.gate_scale = cfg.sparse_attn_gate_scale
        self.q_gain = nn.Parameter(torch.full((cfg.num_heads,), float(cfg.qk_gain_init)))
        self.attn_gate_w = nn.Parameter(torch.zeros(cfg.num_heads, cfg.gate_window)) if cfg.sparse_attn_gate else None

    def forward(self, n: torch.Tensor, w_q, w_k, w_v, w_o, *, slot: int, adapters, observe, rope,
                cu_seqlens=None, max_seqlen=None) -> torch.Tensor:
        """n: the normalized block input [B, T, d]; `rope` = (cos, sin) from `rope_cos_sin`.

        Returns the out-projection output (before attn_scale)."""
        bsz, seq_len, dim = n.shape
        name = f"blocks.{self.layer_idx}.attn"
        if observe is not None:
            observe(f"{name}.c_q.weight", n.detach())  # c_k and c_v read the same input
        q = _project(n, w_q, "q", slot, adapters).reshape(bsz, seq_len, self.num_heads, self.head_dim)
        k = _project(n, w_k, "k", slot, adapters).reshape(bsz, seq_len, self.num_kv_heads, self.head_dim)
        v = _project(n, w_v, "v", slot, adapters).reshape(bsz, seq_len, self.num_kv_heads, self.head_dim)
        q, k = rms_norm(q), rms_norm(k)
        if self.rope_dims > 0:
            cos, sin = rope[0].to(q.dtype), rope[1].to(q.dtype)
            q = apply_partial_rope(q, cos, sin, self.rope_dims)
            k = apply_partial_rope(k, cos, sin, self.rope_dims)
        q = q * self.q_gain.to(q.dtype)[None, None, :, None]
        y = attention(q, k, v, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
        if self.use_xsa:
            y = self._remove_self_value(y, v)
        if self.attn_gate_w is not None:
            gate = torch.sigmoid(self.gate_scale * F.linear(n[..., : self.gate_window], self.attn_gate_w.to(n.dtype)))
            y = y * gate[..., None]
        y = y.reshape(bsz, seq_len, dim)
        if observe is not None:
            observe(f"{name}.proj.weight", y.detach())
        out = F.linear(y, w_o.to(y.dtype))
        delta = adapters.delta("o", slot, n) if adapters is not None else None
        return out if delta is None else out + delta

    def _remove_self_value(self, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """XSA: subtract from each head's output its component along the token's own (unit) value."""
        bsz, seq_len, num_heads, head_dim = y.shape
        group = num_heads // self.num_kv_heads
        y_g = y.reshape(bsz, seq_len, self.num_kv_heads, group, head_dim)
        v_hat = F.normalize(v, dim=-1).unsqueeze(-2)
        y_g = y_g - (y_g * v_hat).sum(dim=-1, keepdim=True) * v_hat
        return y_g.reshape(bsz, seq_len, num_heads, head_dim)


def _project(x: torch.Tensor, w: torch.Tensor, site: str, slot: int, adapters) -> torch.Tensor:
    out = F.linear(x, w.to(x.dtype))
    delta = adapters.delta(site, slot, x) if adapters is not None else None
    return out if delta is None else out + delta


class Block(nn.Module):
    """One physical layer's small parameters; its matrices live in the GPT banks."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.attn_scale = nn.Parameter(torch.ones(cfg.model_dim))
        self.mlp_scale = nn.Parameter(torch.ones(cfg.model_dim))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(cfg.model_dim), torch.zeros(cfg.model_dim))))
        self.attn = CausalSelfAttention(cfg, layer_idx)
        # Deeper layers see a smaller normalized input ("LN scale"), by physical index.
        self.ln_scale_factor = 1.0 / math.sqrt(layer_idx + 1) if cfg.ln_scale else 1.0

    def attn_read(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        mix = self.resid_mix.to(x.dtype)
        return mix[0] * x + mix[1] * x0

    def attn_branch(self, x_in: torch.Tensor, weights, **kw) -> torch.Tensor:
        """attn_scale * Attn(norm(x_in) * s); `weights` = (w_q, w_k, w_v, w_o)."""
        out = self.attn(rms_norm(x_in) * self.ln_scale_factor, *weights, **kw)
        return self.attn_scale.to(out.dtype) * out

    def mlp_branch(self, x: torch.Tensor, w_up, w_down, *, slot: int, adapters, observe) -> torch.Tensor:
        """mlp_scale * down(LeakyReLU_0.5(up(norm(x) * s))^2), with the TTT delta before the scale."""
        n = rms_norm(x) * self.ln_scale_factor
        name = f"blocks.{self.layer_idx}.mlp"
        if observe is not None:
            observe(f"{name}.fc.weight", n.detach())
        hidden = F.leaky_relu(F.linear(n, w_up.to(n.dtype)), negative_slope=0.5).square()
        if observe is not None:
            observe(f"{name}.proj.weight", hidden.detach())
        out = F.linear(hidden, w_down.to(hidden.dtype))
        delta = adapters.delta("mlp", slot, n) if adapters is not None else None
        if delta is not None:
            out = out + delta
        return self.mlp_scale.to(out.dtype) * out


class GPT(nn.Module):
    """The record's model for one `ModelConfig`, in fp32; built under `torch.device("meta")` it skips init.

    Looping (depth recurrence) starts off; training switches it on with `set_looping(True)`.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        L, d, kv, hidden = cfg.num_layers, cfg.model_dim, cfg.kv_dim, cfg.mlp_hidden
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.qo_bank = nn.Parameter(torch.empty(2 * L, d, d))
        self.kv_bank = nn.Parameter(torch.empty(2 * L, kv, d))
        self.mlp_up_bank = nn.Parameter(torch.empty(L, hidden, d))
        self.mlp_down_bank = nn.Parameter(torch.empty(L, d, hidden))
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(L))
        self.num_skip_weights = num_skip_weights(cfg)
        self.skip_weights = nn.Parameter(torch.ones(self.num_skip_weights, d))
        self.skip_gates = nn.Parameter(torch.zeros(self.num_skip_weights, d)) if cfg.skip_gates else None
        self.parallel_lanes = parallel_lanes_enabled(cfg)
        if self.parallel_lanes:
            self.parallel_post_lambdas = nn.Parameter(torch.ones(L, 2, 2))
            self.parallel_resid_lambdas = nn.Parameter(torch.full((L, 2), 1.1))
        if cfg.smear_gate:
            self.smear_gate = nn.Linear(cfg.gate_window, 1, bias=False)
            self.smear_lambda = nn.Parameter(torch.zeros(1))
        if cfg.asym_logit_rescale:
            # #2014's eval-path softcaps. They never receive a gradient in training (the
            # mean-loss path uses the scalar cap), so they stay at logit_softcap: inert.
            self.softcap_pos = nn.Parameter(torch.tensor(float(cfg.logit_softcap)))
            self.softcap_neg = nn.Parameter(torch.tensor(float(cfg.logit_softcap)))
        self.looping = False
        # The device policy's `cast_model` sets this (bf16 on the record's CUDA policy, see rope_cos_sin).
        self.rope_freq_dtype = torch.float32
        self._observer: Observer | None = None
        self._check_lane_order()
        if not self.qo_bank.is_meta:
            self.init_weights()

    # ------------------------------------------------------------------ structure
    def _check_lane_order(self) -> None:
        """Parallel lanes, once split, never merge back: parallel layers must end the decoder."""
        if not self.parallel_lanes:
            return
        for looping in (False, True):
            _, decoder = split_schedule(self.cfg, looping)
            flags = [i >= self.cfg.parallel_start_layer for i in decoder]
            if any(flags) and flags != sorted(flags):
                raise ConfigError(f"model.parallel_start_layer: decoder order {decoder} (looping={looping}) runs a "
                                  f"sequential layer after a parallel one (>= {self.cfg.parallel_start_layer})")

    def set_looping(self, on: bool) -> None:
        self.looping = bool(on)

    def layer_schedule(self) -> tuple[list[int], list[int]]:
        """(encoder, decoder) physical layer indices for the current looping state."""
        return split_schedule(self.cfg, self.looping)

    @property
    def num_slots(self) -> int:
        """Block applications with looping on (TTT allocates one adapter per slot)."""
        return len(looped_order(self.cfg))

    def bank_weights(self, i: int) -> tuple[torch.Tensor, ...]:
        """Physical layer i's (w_q, w_k, w_v, w_o, w_up, w_down) views into the banks."""
        L = self.cfg.num_layers
        return (self.qo_bank[i], self.kv_bank[i], self.kv_bank[L + i], self.qo_bank[L + i],
                self.mlp_up_bank[i], self.mlp_down_bank[i])

    @torch.no_grad()
    def init_weights(self) -> None:
        """The record's init: N(0, 0.005) embedding, orthogonal Q/K/V/up, zero out/down and gates.

        The draw order is the record's, so one seed gives the record's exact weights: the
        embedding, then Q, K, V of every layer, then the MLP-up of every layer (drawing them
        layer by layer instead gives the same distribution but different tensors).
        """
        L = self.cfg.num_layers
        nn.init.normal_(self.tok_emb.weight, mean=0.0, std=self.cfg.tied_embed_init_std)
        for i in range(L):
            nn.init.orthogonal_(self.qo_bank[i])
            nn.init.zeros_(self.qo_bank[L + i])
            nn.init.orthogonal_(self.kv_bank[i])
            nn.init.orthogonal_(self.kv_bank[L + i])
        for i in range(L):
            nn.init.orthogonal_(self.mlp_up_bank[i])
            nn.init.zeros_(self.mlp_down_bank[i])
        for block in self.blocks:
            block.attn_scale.fill_(1.0)
            block.mlp_scale.fill_(1.0)
            block.resid_mix[0].fill_(1.0)
            block.resid_mix[1].fill_(0.0)
            block.attn.q_gain.fill_(self.cfg.qk_gain_init)
            if block.attn.attn_gate_w is not None:
                block.attn.attn_gate_w.zero_()
        self.skip_weights.fill_(1.0)
        if self.skip_gates is not None:
            self.skip_gates.zero_()
        if self.parallel_lanes:
            self.parallel_post_lambdas.fill_(1.0)
            self.parallel_resid_lambdas.fill_(1.1)
        if self.cfg.smear_gate:
            self.smear_gate.weight.zero_()
            self.smear_lambda.zero_()
        if self.cfg.asym_logit_rescale:
            self.softcap_pos.fill_(self.cfg.logit_softcap)
            self.softcap_neg.fill_(self.cfg.logit_softcap)

    @contextlib.contextmanager
    def observe(self, fn: Observer) -> Iterator[None]:
        """Within the block, `fn(weight_name, x)` receives the input of every matmul (detached)."""
        previous, self._observer = self._observer, fn
        try:
            yield
        finally:
            self._observer = previous

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.Tensor, target_ids: torch.Tensor | None = None, *,
                cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None,
                adapters: Adapters | None = None, reduction: str = "mean") -> torch.Tensor:
        """Softcapped fp32 logits [B,T,V] (no targets), mean CE (scalar), or per-token NLL [B,T] ("none")."""
        assert reduction in ("mean", "none"), reduction
        # Positions are absolute indices in the row; RoPE only sees differences, so a packed document
        # scores as if it stood alone.
        rope = rope_cos_sin(input_ids.shape[1], self.cfg.rope_dims, self.cfg.rope_base, input_ids.device,
                            self.rope_freq_dtype)
        kw = dict(adapters=adapters, observe=self._observer, rope=rope, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)

        x = self.tok_emb(input_ids)
        if self.cfg.smear_gate:
            x = self._smear(x, input_ids)
        x = rms_norm(x)
        x0 = x

        encoder, decoder = self.layer_schedule()
        skips: list[torch.Tensor] = []
        slot = 0
        for i in encoder:
            x = self._sequential_block(i, x, x0, slot, kw)
            skips.append(x)
            slot += 1

        lanes: tuple[torch.Tensor, torch.Tensor] | None = None
        for step, i in enumerate(decoder):
            skip = skips.pop() if (step < self.num_skip_weights and skips) else None
            if self.parallel_lanes and i >= self.cfg.parallel_start_layer:
                lane0, lane1 = lanes if lanes is not None else (x, x)
                if skip is not None:
                    lane0 = self._merge_skip(step, lane0, skip)  # the skip feeds the attention lane only
                lanes = self._parallel_block(i, lane0, lane1, x0, slot, kw)
            else:
                if skip is not None:
                    x = self._merge_skip(step, x, skip)
                x = self._sequential_block(i, x, x0, slot, kw)
            slot += 1
        if lanes is not None:
            x = 0.5 * (lanes[0] + lanes[1])

        h = rms_norm(x)
        if self._observer is not None:
            self._observer("tok_emb.weight", h.detach())
        z = F.linear(h, self.tok_emb.weight.to(h.dtype))
        delta = adapters.delta("head", 0, h) if adapters is not None else None
        if delta is not None:
            z = z + delta
        z = z.float()
        # The record's training loss uses the scalar cap; logits and per-token scoring use
        # the asymmetric caps when present (equal numbers while those sit at 30).
        use_asym = self.cfg.asym_logit_rescale and (target_ids is None or reduction == "none")
        logits = self._asym_softcap(z) if use_asym else softcap(z, self.cfg.logit_softcap)
        if target_ids is None:
            return logits
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target_ids.reshape(-1), reduction=reduction)
        return nll if reduction == "mean" else nll.reshape(target_ids.shape)

    def _smear(self, x: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """x_t += lambda * sigmoid(W x_t[:gate_window]) * x_{t-1}, except where token t is BOS (with the BOS fix)."""
        # The weight follows x (as the record's CastedLinear): a bf16 embedding meets it without autocast.
        gate_in = F.linear(x[:, 1:, : self.cfg.gate_window], self.smear_gate.weight.to(x.dtype))
        gate = self.smear_lambda.to(x.dtype) * torch.sigmoid(gate_in)
        prev = x[:, :-1]
        if self.cfg.smear_gate_bos_fix:  # else the last token of document N leaks into document N+1's BOS
            prev = prev * (input_ids[:, 1:] != BOS_ID).to(x.dtype).unsqueeze(-1)
        return torch.cat((x[:, :1], x[:, 1:] + gate * prev), dim=1)

    def _merge_skip(self, step: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        scaled = self.skip_weights[step].to(x.dtype) * skip
        if self.skip_gates is None:
            return x + scaled
        return torch.lerp(scaled, x, torch.sigmoid(self.skip_gates[step].to(x.dtype)))

    def _sequential_block(self, i: int, x, x0, slot: int, kw) -> torch.Tensor:
        block = self.blocks[i]
        w_q, w_k, w_v, w_o, w_up, w_down = self.bank_weights(i)
        x_in = block.attn_read(x, x0)
        x = x_in + block.attn_branch(x_in, (w_q, w_k, w_v, w_o), slot=slot, **kw)
        return x + block.mlp_branch(x, w_up, w_down, slot=slot, adapters=kw["adapters"], observe=kw["observe"])

    def _parallel_block(self, i: int, lane0, lane1, x0, slot: int, kw) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention reads lane 0 (mixed with x0), the MLP reads lane 1; both write both lanes."""
        block = self.blocks[i]
        w_q, w_k, w_v, w_o, w_up, w_down = self.bank_weights(i)
        a = block.attn_branch(block.attn_read(lane0, x0), (w_q, w_k, w_v, w_o), slot=slot, **kw)
        m = block.mlp_branch(lane1, w_up, w_down, slot=slot, adapters=kw["adapters"], observe=kw["observe"])
        resid = self.parallel_resid_lambdas[i].to(lane0.dtype)
        post = self.parallel_post_lambdas[i].to(lane0.dtype)
        new0 = resid[0] * lane0 + post[0, 0] * a + post[1, 0] * m
        new1 = resid[1] * lane1 + post[0, 1] * a + post[1, 1] * m
        return new0, new1

    def _asym_softcap(self, z: torch.Tensor) -> torch.Tensor:
        cap_pos, cap_neg = self.softcap_pos.to(z.dtype), self.softcap_neg.to(z.dtype)
        return torch.where(z > 0, softcap(z, cap_pos), softcap(z, cap_neg))
