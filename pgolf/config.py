"""Typed configuration: one frozen dataclass per concern, validated on construction.

The defaults are the seed's (#2139) logged values, i.e. #2014's configuration
plus #2139's TTT learning rate / weight decay and peer settings. A preset
(`pgolf/presets/NAME.json`) is a partial dict of overrides on top of these
defaults; command-line and environment overrides go on top of the preset.

    RunConfig
      model: ModelConfig    architecture (shapes, features, init)
      train: TrainConfig    optimizer, schedules, wallclock budget
      quant: QuantConfig    GPTQ / LQER / AWQ-lite / compression / size cap
      eval:  EvalConfig     diagnostic packed / sliding-window evaluation
      ttt:   TTTConfig      score-first LoRA TTT, global SGD, peer ensemble

Every value error is a `ConfigError` (a `ValueError`) naming the field.
Unknown keys are errors that name the closest known key.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from pgolf.errors import ConfigError


def _check(cond: bool, section: str, name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{section}.{name}: {msg}")


# --------------------------------------------------------------------------- model
@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    vocab_size: int = 8192
    """Tokenizer vocabulary size V (8192 for the CaseOps SP8192 tokenizer)."""
    num_layers: int = 11
    """Physical transformer blocks."""
    model_dim: int = 512
    num_heads: int = 8
    """Query heads."""
    num_kv_heads: int = 4
    """Key/value heads (GQA); must divide num_heads."""
    mlp_mult: float = 4.0
    """MLP hidden = mlp_mult * model_dim."""
    max_seq_len: int = 3072
    """Longest segment any stage may use (training stages, eval and TTT windows)."""
    tied_embed_init_std: float = 0.005
    logit_softcap: float = 30.0
    asym_logit_rescale: bool = False
    """#2014's softcap_pos/neg parameters (+2 params). Off in the seed's run; inert either way."""
    rope_base: float = 10000.0
    rope_dims: int = 16
    """Partial RoPE: rotate only the first rope_dims of each head."""
    ln_scale: bool = True
    """Scale the normalized block input by 1/sqrt(layer+1)."""
    qk_gain_init: float = 5.25
    num_loops: int = 2
    """Extra passes through layers loop_start..loop_end once looping is on."""
    loop_start: int = 3
    loop_end: int = 5
    parallel_start_layer: int = 8
    """Decoder layers >= this run as two parallel residual lanes (num_layers disables)."""
    xsa_last_n: int = 11
    """XSA on the last n physical layers."""
    skip_gates: bool = True
    smear_gate: bool = True
    gate_window: int = 12
    """Leading channels fed to the SmearGate and the SparseAttnGate."""
    sparse_attn_gate: bool = True
    sparse_attn_gate_scale: float = 0.5
    smear_gate_bos_fix: bool = True
    """The SmearGate never mixes the previous token into a BOS. #2135 ran with it off (SMEAR_GATE_BOS_FIX=0):
    the last token of document N then leaks into document N+1's BOS in packed training and evaluation."""

    def __post_init__(self) -> None:
        s = "model"
        for name in ("vocab_size", "num_layers", "model_dim", "num_heads", "num_kv_heads", "max_seq_len"):
            _check(getattr(self, name) > 0, s, name, f"must be > 0, got {getattr(self, name)}")
        _check(self.model_dim % self.num_heads == 0, s, "num_heads",
               f"{self.num_heads} heads do not divide model_dim {self.model_dim}")
        _check(self.num_heads % self.num_kv_heads == 0, s, "num_kv_heads",
               f"{self.num_kv_heads} KV heads do not divide num_heads {self.num_heads}")
        _check(self.head_dim % 2 == 0, s, "model_dim", f"head_dim {self.head_dim} must be even")
        _check(0 <= self.rope_dims <= self.head_dim and self.rope_dims % 2 == 0, s, "rope_dims",
               f"must be even and <= head_dim {self.head_dim}, got {self.rope_dims}")
        _check(self.mlp_mult > 0, s, "mlp_mult", "must be > 0")
        _check(self.num_loops >= 0, s, "num_loops", "must be >= 0")
        if self.num_loops > 0:
            _check(0 <= self.loop_start <= self.loop_end < self.num_layers, s, "loop_end",
                   f"need 0 <= loop_start <= loop_end < num_layers, got {self.loop_start}..{self.loop_end}")
        _check(0 <= self.parallel_start_layer <= self.num_layers, s, "parallel_start_layer",
               f"must be in [0, {self.num_layers}]")
        _check(0 <= self.xsa_last_n <= self.num_layers, s, "xsa_last_n", f"must be in [0, {self.num_layers}]")
        _check(0 < self.gate_window <= self.model_dim, s, "gate_window", "must be in (0, model_dim]")
        _check(self.logit_softcap > 0, s, "logit_softcap", "must be > 0")
        _check(self.vocab_size <= 65536, s, "vocab_size", "token ids are stored as uint16 (<= 65536)")

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def mlp_hidden(self) -> int:
        return int(self.mlp_mult * self.model_dim)


# --------------------------------------------------------------------------- train
@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    seed: int = 42
    train_batch_tokens: int = 786_432
    """Global tokens per optimizer step (all ranks, all micro-steps)."""
    grad_accum_steps: int = 0
    """Micro-steps per optimizer step; 0 derives 8 // world_size (at least 1), as the record does."""
    seq_len_stages: tuple[tuple[int, float], ...] = ((1024, 0.1), (2048, 0.7), (3072, 1.0))
    """(segment cap in tokens, until progress fraction): the first stage with progress <= frac wins."""
    seq_change_warmup_steps: int = 32
    """Linear LR re-warm over this many steps after each stage change."""
    iterations: int = 20_000
    max_wallclock_seconds: float = 600.0
    """0 = no wallclock cap (progress is then step / iterations)."""
    gptq_reserve_seconds: float = 4.0
    """Seconds of the wallclock kept for Hessian collection, which reads training data."""
    warmup_steps: int = 20
    """Compile-warmup steps (non-looped + looped), excluded from the clock and then undone."""
    warmdown_frac: float = 0.85
    min_lr: float = 0.1
    """LR multiplier floor of the linear warmdown."""
    matrix_lr: float = 0.026
    scalar_lr: float = 0.02
    tied_embed_lr: float = 0.03
    muon_momentum: float = 0.97
    muon_momentum_warmup_start: float = 0.92
    muon_momentum_warmup_steps: int = 1500
    muon_backend_steps: int = 5
    muon_row_normalize: bool = True
    muon_wd: float = 0.095
    adam_wd: float = 0.02
    embed_wd: float = 0.085
    adam_eps: float = 1e-8
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip_norm: float = 0.3
    ema_decay: float = 0.9965
    enable_looping_at: float = 0.35
    """Progress fraction at which depth recurrence switches on."""
    val_loss_every: int = 0
    """Steps between validation evals during training (0 = only at the end)."""
    train_log_every: int = 500
    checkpoint_every: int = 0
    """Steps between resumable checkpoints (0 = only at the end or on failure)."""
    compile: str = "auto"
    """auto (compile on CUDA only) | on | off."""
    ema_warmup: bool = False
    """EMA decay min(ema_decay, (1+k)/(10+k)) at step k: short runs average recent weights, not the init.
    Off in seed/record (the seed has no warm-up); on in the small presets."""

    def __post_init__(self) -> None:
        s = "train"
        object.__setattr__(self, "seq_len_stages", tuple((int(a), float(b)) for a, b in self.seq_len_stages))
        _check(len(self.seq_len_stages) > 0, s, "seq_len_stages", "needs at least one stage")
        fracs = [f for _, f in self.seq_len_stages]
        _check(all(0 < f <= 1 for f in fracs), s, "seq_len_stages", "fractions must be in (0, 1]")
        _check(fracs == sorted(fracs), s, "seq_len_stages", "fractions must be ascending")
        _check(all(n > 0 for n, _ in self.seq_len_stages), s, "seq_len_stages", "lengths must be > 0")
        _check(self.train_batch_tokens > 0, s, "train_batch_tokens", "must be > 0")
        _check(self.grad_accum_steps >= 0, s, "grad_accum_steps", "must be >= 0")
        _check(self.iterations > 0, s, "iterations", "must be > 0")
        _check(self.max_wallclock_seconds >= 0, s, "max_wallclock_seconds", "must be >= 0")
        _check(0 <= self.gptq_reserve_seconds, s, "gptq_reserve_seconds", "must be >= 0")
        _check(0 <= self.warmdown_frac <= 1, s, "warmdown_frac", "must be in [0, 1]")
        _check(0 <= self.min_lr <= 1, s, "min_lr", "must be in [0, 1]")
        _check(0 <= self.ema_decay < 1, s, "ema_decay", "must be in [0, 1)")
        _check(0 <= self.enable_looping_at <= 1, s, "enable_looping_at", "must be in [0, 1]")
        _check(self.compile in ("auto", "on", "off"), s, "compile", f"auto|on|off, got {self.compile!r}")

    @property
    def max_seq_len(self) -> int:
        return max(n for n, _ in self.seq_len_stages)


# --------------------------------------------------------------------------- quant
@dataclass(frozen=True, kw_only=True)
class QuantConfig:
    matrix_bits: int = 6
    embed_bits: int = 7
    attn_clip_sigmas: float = 13.0
    mlp_clip_sigmas: float = 11.5
    embed_clip_sigmas: float = 14.0
    gptq_damp: float = 0.01
    """Damping as a fraction of the mean Hessian diagonal."""
    gptq_block_size: int = 128
    calibration_batches: int = 16
    calibration_seq_len: int = 0
    """Calibration window length; 0 = the largest training stage."""
    passthrough_max_numel: int = 65_536
    """Tensors this small are stored as fp16 (gates int8 per row)."""
    gate_int8: bool = True
    lqer_enabled: bool = True
    lqer_rank: int = 4
    lqer_top_k: int = 3
    lqer_a_bits: int = 2
    lqer_b_bits: int = 4
    lqer_group: int = 64
    awq_enabled: bool = True
    awq_bits: int = 8
    awq_group_size: int = 64
    awq_top_k: int = 1
    compressor: str = "pergroup"
    """pergroup | brotli | lzma | zstd."""
    size_cap_bytes: int = 16_000_000
    """Decimal cap on code bytes + model bytes."""

    def __post_init__(self) -> None:
        s = "quant"
        for name in ("matrix_bits", "embed_bits", "awq_bits"):
            _check(2 <= getattr(self, name) <= 8, s, name, "must be in [2, 8]")
        _check(self.compressor in ("pergroup", "brotli", "lzma", "zstd"), s, "compressor",
               f"pergroup|brotli|lzma|zstd, got {self.compressor!r}")
        _check(self.gptq_block_size > 0, s, "gptq_block_size", "must be > 0")
        _check(self.calibration_batches > 0, s, "calibration_batches", "must be > 0")
        _check(self.lqer_rank > 0 and self.lqer_group > 0, s, "lqer_rank", "rank and group must be > 0")
        _check(self.size_cap_bytes > 0, s, "size_cap_bytes", "must be > 0")


# --------------------------------------------------------------------------- eval
@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    eval_seq_len: int = 3072
    """Segment cap of the diagnostic packed evaluation."""
    val_batch_tokens: int = 524_288
    """Global tokens per packed eval batch."""
    include_tail: bool = True
    """Score the whole val stream (47,853,343 targets), not a multiple of eval_seq_len."""
    sliding_stride: int = 0
    """>0 switches the diagnostic eval to sliding windows of eval_seq_len at this stride."""
    val_docs_limit: int = 0
    """Evaluate only the first N validation documents (0 = all); for quick CPU runs."""
    ngram_tilt: str = "off"
    """Token n-gram tilt of the scored NLL: off | causal (statistics in pgolf's scoring order, legal by
    construction) | stream (#2135: stream order over the whole set before scoring; flagged by the audit)."""
    ngram_order: int = 16
    """n of the token n-gram: the context is the n-1 preceding tokens."""
    ngram_threshold: float = 0.8
    """Gate: the context's top next-token share (float32) must reach this; there is no minimum count."""
    ngram_beta: float = 2.625
    """Tilt strength in nats: the hinted token's logit is raised by beta and the distribution renormalised."""

    def __post_init__(self) -> None:
        _check(self.ngram_tilt in ("off", "causal", "stream"), "eval", "ngram_tilt",
               f"off|causal|stream, got {self.ngram_tilt!r}")
        _check(self.ngram_order >= 2, "eval", "ngram_order", "must be >= 2")
        _check(0 < self.ngram_threshold <= 1, "eval", "ngram_threshold", "must be in (0, 1]")
        _check(self.ngram_beta >= 0, "eval", "ngram_beta", "must be >= 0")
        _check(self.eval_seq_len > 0, "eval", "eval_seq_len", "must be > 0")
        _check(self.val_batch_tokens > 0, "eval", "val_batch_tokens", "must be > 0")
        _check(0 <= self.sliding_stride <= self.eval_seq_len, "eval", "sliding_stride",
               "must be in [0, eval_seq_len]")
        _check(self.val_docs_limit >= 0, "eval", "val_docs_limit", "must be >= 0")

    @property
    def tilted(self) -> bool:
        """Whether scores get the n-gram tilt (`ngram_tilt` is an order, not "off")."""
        return self.ngram_tilt != "off"


# --------------------------------------------------------------------------- ttt
@dataclass(frozen=True, kw_only=True)
class TTTConfig:
    enabled: bool = True
    eval_seq_len: int = 3072
    """Context window of each TTT chunk forward."""
    batch_size: int = 24
    """Documents per TTT batch (one LoRA row each)."""
    chunk_size: int = 48
    short_chunk_steps: tuple[tuple[int, int], ...] = ((256, 8), (2000, 24))
    """(max doc length, chunk): batches whose longest doc fits get the smaller chunk."""
    lora_rank: int = 80
    lora_alpha: float = 144.0
    lora_lr: float = 1.5e-4
    local_lr_mult: float = 0.75
    beta1: float = 0.0
    beta2: float = 0.99
    eps: float = 1e-10
    weight_decay: float = 0.25
    mask: str = "no_qv"
    """LoRA sites: all | no_q | no_v | no_qv (K, O, MLP and head on) | no_k (#2135: Q, V, O, MLP and head)."""
    warm_start_a: bool = True
    """Per-batch reset zeroes B only; A carries over."""
    grad_steps: int = 1
    phased_prefix_docs: int = 2500
    phased_num_phases: int = 1
    global_lr: float = 1e-3
    global_momentum: float = 0.9
    global_epochs: int = 1
    global_chunk_tokens: int = 32_768
    global_grad_clip: float = 1.0
    peer_mode: str = "causal"
    """off | causal (legal by construction) | pr2139 (#2139's ensemble as submitted; non-compliant)."""
    peer_k: int = 4
    """Ensemble size including self; 1 disables."""
    peer_conf_threshold: float = 0.5
    """Own-distribution entropy (nats) at or above which a token is routed to the blend."""
    peer_blend_w: float = 0.8
    """Weight of the own probability in the blend."""
    peer_seed: int = 42
    """Seeds the peer draw (seed * 1013 + batch index), as #2139 did."""
    schedule: str = "static"
    """static: batches go to `virtual_ranks` virtual ranks by a fixed rule, so the score is the same on any
    number of processes dividing it; dynamic: ranks claim batches as they free up (#2139; depends on timing)."""
    virtual_ranks: int = 8
    """Virtual ranks of the static schedule (8: the record's GPUs); the process count must divide it."""

    def __post_init__(self) -> None:
        s = "ttt"
        object.__setattr__(self, "short_chunk_steps", tuple((int(a), int(b)) for a, b in self.short_chunk_steps))
        _check(self.mask in ("all", "no_q", "no_v", "no_qv", "no_k"), s, "mask",
               f"all|no_q|no_v|no_qv|no_k, got {self.mask!r}")
        # The pr2139 mode was called "seed" (after #2139, the baseline pgolf reproduces), a word that also
        # names the RNG seed and a preset; configs and reports written before the rename still load.
        if self.peer_mode == "seed":
            object.__setattr__(self, "peer_mode", "pr2139")
        _check(self.peer_mode in ("off", "causal", "pr2139"), s, "peer_mode",
               f"off|causal|pr2139, got {self.peer_mode!r}")
        _check(self.peer_k >= 1, s, "peer_k", "must be >= 1")
        _check(0 <= self.peer_blend_w <= 1, s, "peer_blend_w", "must be in [0, 1]")
        _check(self.batch_size >= 1, s, "batch_size", "must be >= 1")
        _check(self.chunk_size >= 1, s, "chunk_size", "must be >= 1")
        _check(self.lora_rank >= 1, s, "lora_rank", "must be >= 1")
        _check(self.eval_seq_len >= self.chunk_size, s, "eval_seq_len", "must be >= chunk_size")
        _check(self.phased_num_phases >= 0 and self.phased_prefix_docs >= 0, s, "phased_num_phases",
               "phases and prefix docs must be >= 0")
        _check(self.grad_steps >= 1, s, "grad_steps", "must be >= 1")
        _check(self.schedule in ("static", "dynamic"), s, "schedule", f"static|dynamic, got {self.schedule!r}")
        _check(self.virtual_ranks >= 1, s, "virtual_ranks", "must be >= 1")

    @property
    def lora_sites(self) -> tuple[str, ...]:
        """Per-block sites with an adapter ('head' is always adapted too)."""
        q = self.mask in ("all", "no_v", "no_k")
        v = self.mask in ("all", "no_q", "no_k")
        k = self.mask != "no_k"
        return tuple(x for x, on in (("q", q), ("k", k), ("v", v), ("o", True), ("mlp", True)) if on)


# --------------------------------------------------------------------------- run
@dataclass(frozen=True, kw_only=True)
class RunConfig:
    preset: str = "seed"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ttt: TTTConfig = field(default_factory=TTTConfig)

    def __post_init__(self) -> None:
        m, t = self.model, self.train
        _check(t.max_seq_len <= m.max_seq_len, "train", "seq_len_stages",
               f"stage of {t.max_seq_len} tokens exceeds model.max_seq_len (RoPE length) {m.max_seq_len}")
        _check(self.eval.eval_seq_len <= m.max_seq_len, "eval", "eval_seq_len",
               f"{self.eval.eval_seq_len} exceeds model.max_seq_len {m.max_seq_len}")
        _check(self.ttt.eval_seq_len <= m.max_seq_len, "ttt", "eval_seq_len",
               f"{self.ttt.eval_seq_len} exceeds model.max_seq_len {m.max_seq_len}")
        # The tilt renormalises one model distribution; a peer blend of tilted scores would not sum to 1.
        _check(self.eval.ngram_tilt == "off" or self.ttt.peer_mode == "off" or self.ttt.peer_k <= 1, "eval",
               "ngram_tilt", f"needs ttt.peer_mode=off or peer_k=1 (got {self.ttt.peer_mode}, k={self.ttt.peer_k})")

    # -- (de)serialisation ---------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        return _build(cls, d, "")

    def replace(self, overrides: dict[str, Any]) -> "RunConfig":
        """A new config with nested overrides applied ({'train': {'seed': 1}} or {'train.seed': 1})."""
        return RunConfig.from_dict(merge(self.to_dict(), nest(overrides)))

    def diff(self, other: "RunConfig") -> list[str]:
        """Dotted names of the fields whose values differ."""
        a, b = flatten(self.to_dict()), flatten(other.to_dict())
        return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


SECTIONS = {"model": ModelConfig, "train": TrainConfig, "quant": QuantConfig, "eval": EvalConfig, "ttt": TTTConfig}


def _build(cls, d: dict[str, Any], prefix: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(d).__name__}")
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in d.items():
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"unknown config key {prefix}{key}{hint}")
        sub = SECTIONS.get(key) if cls is RunConfig else None
        if sub is not None:
            kwargs[key] = _build(sub, value, f"{key}.")
        else:
            kwargs[key] = _coerce(known[key], value, f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except TypeError as e:  # wrong argument types reach here
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {e}") from None


def _coerce(f: dataclasses.Field, value: Any, name: str) -> Any:
    """JSON/CLI values to the field's declared type (tuples from lists, ints from '3', ...)."""
    default = f.default if f.default is not dataclasses.MISSING else None
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple):
            if isinstance(value, str):
                value = json.loads(value)
            return tuple(tuple(x) for x in value)
        if isinstance(default, str):
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: cannot use {value!r} as {type(default).__name__}") from None
    return value


# --------------------------------------------------------------------------- dict helpers
def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{'train.seed': 1, 'model': {...}} -> fully nested dict."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]] = merge(node[parts[-1]], value)
        else:
            node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.loads(json.dumps(v))  # tuples -> lists, for comparisons
    return out


# --------------------------------------------------------------------------- presets
def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("pgolf.presets").iterdir() if p.name.endswith(".json"))


def load_preset(name: str, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The defaults, then presets/NAME.json, then `overrides` (nested or dotted keys)."""
    names = preset_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"unknown preset {name!r}{hint}; known: {', '.join(names)}")
    data = json.loads(resources.files("pgolf.presets").joinpath(f"{name}.json").read_text())
    data.pop("_doc", None)
    data = merge(data, nest(overrides or {}))
    data["preset"] = name
    return RunConfig.from_dict(data)


def load_json(path) -> RunConfig:
    with open(path) as f:
        return RunConfig.from_dict(json.load(f))


def parse_set_args(items: list[str] | None) -> dict[str, Any]:
    """`--set train.seed=3 --set model.num_layers=4` -> {'train.seed': '3', ...} (typed later)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected SECTION.FIELD=VALUE")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def resolve(base: RunConfig | str | Path, *, env: dict[str, Any] | None = None, sets: list[str] | tuple = (),
            flags: dict[str, Any] | None = None) -> RunConfig:
    """The one override path every verb, the pipeline and the packed file take.

    Layers, later ones win: `base` (a RunConfig, a preset name or a config.json path) -> `env`
    (the seed's environment knobs, already mapped to fields by `pgolf.app.envknobs`) -> `sets`
    (`--set SECTION.FIELD=VALUE` strings) -> `flags` (dedicated options such as `--seed`, as
    field -> value; None values are options that were not given).
    """
    if isinstance(base, Path) or (isinstance(base, str) and base.endswith(".json")):
        cfg = load_json(base)
    elif isinstance(base, str):
        cfg = load_preset(base)
    else:
        cfg = base
    overrides: dict[str, Any] = dict(env or {})
    overrides.update(parse_set_args(list(sets)))
    overrides.update({k: v for k, v in (flags or {}).items() if v is not None})
    return cfg.replace(overrides) if overrides else cfg
