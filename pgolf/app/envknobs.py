"""The seed's environment knobs, mapped onto pgolf's config fields.

#2014 / #2139 are configured entirely through environment variables
(`NUM_LAYERS=11 MATRIX_LR=0.026 ... torchrun train_gpt.py`). `pgolf train --env`
accepts the same variables so those command lines keep working; this module is the
only place pgolf reads them. Every name the seed reads falls in one of four classes:

    mapped    sets a config field (NUM_LAYERS -> model.num_layers), possibly parsed
              from the seed's string forms (TRAIN_SEQ_SCHEDULE="1024@0.100,...", with
              the parsers below)
    fixed     a switch pgolf implements only one way; the seed's value is accepted,
              any other is a ConfigError (TIE_EMBEDDINGS must stay 1)
    ignored   read by the seed but meaningless here: dead knobs (EVAL_STRIDE,
              ROPE_TRAIN_SEQ_LEN), paths (DATA_PATH), compile tuning, dev entry points
    unknown   not read by the seed; with a seed-like prefix (TTT_, MUON_, ...) it is
              almost certainly a typo, so it is a ConfigError naming the closest name

Variables without a seed-like prefix (PATH, HOME, RANK, ...) are not ours and are
left alone.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Mapping

from pgolf.config import RunConfig, resolve
from pgolf.errors import ConfigError


def _bool(name: str, raw: str) -> bool:
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}={raw!r}: expected 0 or 1")


def _number(kind: type) -> Callable[[str, str], Any]:
    def parse(name: str, raw: str):
        try:
            return kind(float(raw)) if kind is int and "e" in raw.lower() else kind(raw.strip())
        except ValueError:
            raise ConfigError(f"{name}={raw!r}: expected {'an integer' if kind is int else 'a number'}") from None
    return parse


_int, _float = _number(int), _number(float)


def _str(name: str, raw: str) -> str:
    return raw.strip().lower()


def parse_seq_schedule(text: str, default_seq_len: int | None = None,
                       field: str = "TRAIN_SEQ_SCHEDULE") -> tuple[tuple[int, float], ...]:
    """'1024@0.100,2048@0.700,3072@1.000' -> ((1024, 0.1), (2048, 0.7), (3072, 1.0)).

    Stages are sorted by progress; if the last threshold is below 1 the last length is extended to 1.0;
    an empty string means a single stage of `default_seq_len` (required then).
    """
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        if default_seq_len is None:
            raise ConfigError(f"{field}: empty schedule and no default sequence length")
        return ((int(default_seq_len), 1.0),)
    stages = []
    for item in items:
        seq, sep, frac = item.partition("@")
        try:
            if not sep:
                raise ValueError
            n, p = int(seq), float(frac)
        except ValueError:
            raise ConfigError(f"{field}: stage {item!r} is not SEQ@PROGRESS (e.g. 2048@0.7)") from None
        if n <= 0 or not 0 < p <= 1:
            raise ConfigError(f"{field}: stage {item!r} needs SEQ > 0 and 0 < PROGRESS <= 1")
        stages.append((n, p))
    stages.sort(key=lambda s: s[1])
    if stages[-1][1] < 1.0:
        stages.append((stages[-1][0], 1.0))
    return tuple(stages)


def parse_short_chunk_steps(text: str, field: str = "TTT_SHORT_SCORE_FIRST_STEPS") -> tuple[tuple[int, int], ...]:
    """'256:8,2000:24' -> ((256, 8), (2000, 24)), sorted by doc length; '=' also separates; '' -> ()."""
    out = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        doc, sep, chunk = item.replace("=", ":", 1).partition(":")
        try:
            if not sep:
                raise ValueError
            doc_len, chunk_len = int(doc), int(chunk)
        except ValueError:
            raise ConfigError(f"{field}: item {item!r} is not DOCLEN:CHUNK (e.g. 256:8)") from None
        if doc_len <= 0 or chunk_len <= 0:
            raise ConfigError(f"{field}: item {item!r} needs positive integers")
        out.append((doc_len, chunk_len))
    return tuple(sorted(out))


def _chunk_steps(name: str, raw: str) -> tuple[tuple[int, int], ...]:
    return parse_short_chunk_steps(raw, field=name)


# name -> (config field(s), parser). SEED also seeds the peer draw, as in #2139.
MAPPED: dict[str, tuple[tuple[str, ...], Callable]] = {
    # model
    "VOCAB_SIZE": (("model.vocab_size",), _int), "NUM_LAYERS": (("model.num_layers",), _int),
    "MODEL_DIM": (("model.model_dim",), _int), "NUM_HEADS": (("model.num_heads",), _int),
    "NUM_KV_HEADS": (("model.num_kv_heads",), _int), "MLP_MULT": (("model.mlp_mult",), _float),
    "TIED_EMBED_INIT_STD": (("model.tied_embed_init_std",), _float),
    "LOGIT_SOFTCAP": (("model.logit_softcap",), _float),
    "ASYM_LOGIT_RESCALE": (("model.asym_logit_rescale",), _bool),
    "ROPE_BASE": (("model.rope_base",), _float), "ROPE_DIMS": (("model.rope_dims",), _int),
    "LN_SCALE": (("model.ln_scale",), _bool), "QK_GAIN_INIT": (("model.qk_gain_init",), _float),
    "NUM_LOOPS": (("model.num_loops",), _int), "LOOP_START": (("model.loop_start",), _int),
    "LOOP_END": (("model.loop_end",), _int), "PARALLEL_START_LAYER": (("model.parallel_start_layer",), _int),
    "XSA_LAST_N": (("model.xsa_last_n",), _int), "SKIP_GATES_ENABLED": (("model.skip_gates",), _bool),
    "SMEAR_GATE_ENABLED": (("model.smear_gate",), _bool), "GATE_WINDOW": (("model.gate_window",), _int),
    "SPARSE_ATTN_GATE_ENABLED": (("model.sparse_attn_gate",), _bool),
    "SPARSE_ATTN_GATE_SCALE": (("model.sparse_attn_gate_scale",), _float),
    "SMEAR_GATE_BOS_FIX": (("model.smear_gate_bos_fix",), _bool),
    # train
    "SEED": (("train.seed", "ttt.peer_seed"), _int), "ITERATIONS": (("train.iterations",), _int),
    "TRAIN_BATCH_TOKENS": (("train.train_batch_tokens",), _int),
    "SEQ_CHANGE_WARMUP_STEPS": (("train.seq_change_warmup_steps",), _int),
    "MAX_WALLCLOCK_SECONDS": (("train.max_wallclock_seconds",), _float),
    "GPTQ_RESERVE_SECONDS": (("train.gptq_reserve_seconds",), _float),
    "WARMUP_STEPS": (("train.warmup_steps",), _int), "WARMDOWN_FRAC": (("train.warmdown_frac",), _float),
    "MIN_LR": (("train.min_lr",), _float), "MATRIX_LR": (("train.matrix_lr",), _float),
    "SCALAR_LR": (("train.scalar_lr",), _float), "TIED_EMBED_LR": (("train.tied_embed_lr",), _float),
    "MUON_MOMENTUM": (("train.muon_momentum",), _float),
    "MUON_MOMENTUM_WARMUP_START": (("train.muon_momentum_warmup_start",), _float),
    "MUON_MOMENTUM_WARMUP_STEPS": (("train.muon_momentum_warmup_steps",), _int),
    "MUON_BACKEND_STEPS": (("train.muon_backend_steps",), _int),
    "MUON_ROW_NORMALIZE": (("train.muon_row_normalize",), _bool), "MUON_WD": (("train.muon_wd",), _float),
    "ADAM_WD": (("train.adam_wd",), _float), "EMBED_WD": (("train.embed_wd",), _float),
    "ADAM_EPS": (("train.adam_eps",), _float), "BETA1": (("train.beta1",), _float),
    "BETA2": (("train.beta2",), _float), "GRAD_CLIP_NORM": (("train.grad_clip_norm",), _float),
    "EMA_DECAY": (("train.ema_decay",), _float), "ENABLE_LOOPING_AT": (("train.enable_looping_at",), _float),
    "VAL_LOSS_EVERY": (("train.val_loss_every",), _int), "TRAIN_LOG_EVERY": (("train.train_log_every",), _int),
    # quant
    "MATRIX_BITS": (("quant.matrix_bits",), _int), "EMBED_BITS": (("quant.embed_bits",), _int),
    "ATTN_CLIP_SIGMAS": (("quant.attn_clip_sigmas",), _float),
    "MLP_CLIP_SIGMAS": (("quant.mlp_clip_sigmas",), _float),
    "EMBED_CLIP_SIGMAS": (("quant.embed_clip_sigmas",), _float),
    "GPTQ_CALIBRATION_BATCHES": (("quant.calibration_batches",), _int),
    "GATED_ATTN_QUANT_GATE": (("quant.gate_int8",), _bool),
    "LQER_ENABLED": (("quant.lqer_enabled",), _bool), "LQER_RANK": (("quant.lqer_rank",), _int),
    "LQER_TOP_K": (("quant.lqer_top_k",), _int), "LQER_ASYM_GROUP": (("quant.lqer_group",), _int),
    "AWQ_LITE_ENABLED": (("quant.awq_enabled",), _bool), "AWQ_LITE_BITS": (("quant.awq_bits",), _int),
    "AWQ_LITE_GROUP_SIZE": (("quant.awq_group_size",), _int),
    "AWQ_LITE_GROUP_TOP_K": (("quant.awq_top_k",), _int), "COMPRESSOR": (("quant.compressor",), _str),
    # eval
    "EVAL_SEQ_LEN": (("eval.eval_seq_len",), _int), "VAL_BATCH_TOKENS": (("eval.val_batch_tokens",), _int),
    "EVAL_INCLUDE_TAIL": (("eval.include_tail",), _bool),
    # #2135's n-gram tilt: on means pgolf's causal order (eval.ngram_tilt=stream reproduces #2135's order)
    "NGRAM_TILT_ENABLED": (("eval.ngram_tilt",), lambda n, v: "causal" if _bool(n, v) else "off"),
    "TOKEN_ORDER": (("eval.ngram_order",), _int), "TOKEN_THRESHOLD": (("eval.ngram_threshold",), _float),
    "TOKEN_BOOST": (("eval.ngram_beta",), _float),
    # ttt
    "TTT_ENABLED": (("ttt.enabled",), _bool), "TTT_EVAL_SEQ_LEN": (("ttt.eval_seq_len",), _int),
    "TTT_BATCH_SIZE": (("ttt.batch_size",), _int), "TTT_CHUNK_SIZE": (("ttt.chunk_size",), _int),
    "TTT_SHORT_SCORE_FIRST_STEPS": (("ttt.short_chunk_steps",), _chunk_steps),
    "TTT_LORA_RANK": (("ttt.lora_rank",), _int), "TTT_LORA_ALPHA": (("ttt.lora_alpha",), _float),
    "TTT_LORA_LR": (("ttt.lora_lr",), _float), "TTT_LOCAL_LR_MULT": (("ttt.local_lr_mult",), _float),
    "TTT_BETA1": (("ttt.beta1",), _float), "TTT_BETA2": (("ttt.beta2",), _float),
    "TTT_WEIGHT_DECAY": (("ttt.weight_decay",), _float), "TTT_MASK": (("ttt.mask",), _str),
    "TTT_WARM_START_A": (("ttt.warm_start_a",), _bool), "TTT_GRAD_STEPS": (("ttt.grad_steps",), _int),
    "PHASED_TTT_PREFIX_DOCS": (("ttt.phased_prefix_docs",), _int),
    "PHASED_TTT_NUM_PHASES": (("ttt.phased_num_phases",), _int),
    "GLOBAL_TTT_LR": (("ttt.global_lr",), _float), "GLOBAL_TTT_MOMENTUM": (("ttt.global_momentum",), _float),
    "GLOBAL_TTT_EPOCHS": (("ttt.global_epochs",), _int),
    "GLOBAL_TTT_CHUNK_TOKENS": (("ttt.global_chunk_tokens",), _int),
    "GLOBAL_TTT_GRAD_CLIP": (("ttt.global_grad_clip",), _float),
    "TTT_PEER_ENSEMBLE_K": (("ttt.peer_k",), _int),
    "TTT_PEER_CONF_THRESHOLD": (("ttt.peer_conf_threshold",), _float),
    "TTT_PEER_CONF_BLEND_W": (("ttt.peer_blend_w",), _float),
    # pgolf's own (the seed always stole work): the static schedule and its rank count
    "TTT_SCHEDULE": (("ttt.schedule",), _str), "TTT_VIRTUAL_RANKS": (("ttt.virtual_ranks",), _int),
}

# Handled specially in config_from_env: the stages and their largest length / the TTT mask's Q and V bits.
SPECIAL = ("TRAIN_SEQ_SCHEDULE", "TRAIN_SEQ_LEN", "TTT_Q_LORA", "TTT_V_LORA", "TTT_K_LORA",
           "TTT_SHORT_SCORE_FIRST_ENABLED")

# Switches pgolf implements one way only: the seed's (only) accepted value, compared as a string.
FIXED: dict[str, str] = {
    "TIE_EMBEDDINGS": "1", "ROPE_YARN": "0", "PARALLEL_FINAL_LANE": "mean", "FUSED_CE_ENABLED": "1",
    "GATED_ATTN_ENABLED": "0", "ATTN_OUT_GATE_ENABLED": "0", "SPARSE_ATTN_GATE_INIT_STD": "0.0",
    "TRAIN_SEQ_SCHEDULE_MODE": "wallclock", "WARMDOWN_ITERS": "0", "MIDRUN_CAP_SCHEDULE": "",
    "LQER_ASYM_ENABLED": "1", "LQER_SCOPE": "all", "LQER_GAIN_SELECT": "0", "VAL_DOC_FRACTION": "1.0",
    "TTT_OPTIMIZER": "adam", "TTT_O_LORA": "1", "TTT_MLP_LORA": "1",
    "TTT_EVAL_BATCHES": "", "TTT_SHORT_LORA_ENABLED": "0", "TTT_TRAIN_MIN_DOC_LEN": "0",
    "TTT_TRAIN_MAX_DOC_LEN": "0", "TTT_WARM_START_MEAN_ENABLED": "0", "GLOBAL_TTT_BATCH_SEQS": "32",
    "GLOBAL_TTT_WARMUP_START_LR": "0.0", "GLOBAL_TTT_WARMUP_CHUNKS": "0",
    "GLOBAL_TTT_RESPECT_DOC_BOUNDARIES": "1",
    "CONTROL_TENSOR_NAME_PATTERNS": "attn_scale,attn_scales,mlp_scale,mlp_scales,resid_mix,resid_mixes,q_gain,"
                                    "skip_weight,skip_weights,skip_gates,parallel_post_lambdas,"
                                    "parallel_resid_lambdas,attn_gate_proj,attn_gate_w,smear_gate,smear_lambda",
}

# Read by the seed, meaningless in pgolf: name -> why.
IGNORED: dict[str, str] = {
    "EVAL_STRIDE": "dead in the seed (read nowhere)",
    "ROPE_TRAIN_SEQ_LEN": "dead in the seed (only YaRN reads it)",
    "MATRIX_CLIP_SIGMAS": "matches no tensor in the seed",
    "EMBED_LR": "unused with tied embeddings (TIED_EMBED_LR applies)",
    "LQER_FACTOR_BITS": "symmetric LQER only; the asymmetric path packs A int2 / B int4",
    "GATED_ATTN_INIT_STD": "gated attention is off", "ATTN_OUT_GATE_SRC": "the output gate is off",
    "TTT_SHORT_CHUNK_SIZE": "inert: TTT_SHORT_SCORE_FIRST_STEPS overrides it",
    "TTT_SHORT_DOC_LEN": "inert: TTT_SHORT_SCORE_FIRST_STEPS overrides it",
    "TTT_SHORT_LORA_RANK": "short-doc LoRA is off", "TTT_SHORT_LORA_LR": "short-doc LoRA is off",
    "TTT_SHORT_WEIGHT_DECAY": "short-doc LoRA is off", "TTT_SHORT_BETA2": "short-doc LoRA is off",
    "TTT_WARM_START_MEAN_DOC_LEN": "mean warm start is off",
    "TTT_WARM_START_MEAN_MOMENTUM": "mean warm start is off",
    "MIDRUN_CAP_LOG_UPDATES": "the mid-run cap is off",
    "COMPILE_SHAPE_WARMUP": "compile tuning", "COMPILE_SHAPE_WARMUP_ITERS": "compile tuning",
    "COMPILE_SHAPE_WARMUP_LOOP_MODES": "compile tuning", "DYNAMO_CACHE_SIZE_LIMIT": "compile tuning",
    "DYNAMO_ACCUMULATED_CACHE_SIZE_LIMIT": "compile tuning",
    "CASEOPS_ENABLED": "a property of the data directory (its manifest)",
    "DATA_DIR": "path: use --data", "DATA_PATH": "path: use --data", "TOKENIZER_PATH": "path: the data manifest",
    "ARTIFACT_DIR": "path: use --out", "RUN_ID": "the run directory names the run",
    "FORCE_STOP_STEP": "use --max-steps", "TTT_EVAL_ONLY": "use `pgolf eval`",
    "QUANTIZE_ONLY": "use `pgolf quantize`", "PREQUANT_ONLY": "use `pgolf eval --prequant`",
}

# A variable starting with one of these is the seed's or a typo of one.
KNOWN_PREFIXES = ("TTT_", "MUON_", "GPTQ_", "LQER_", "AWQ_", "TRAIN_", "EVAL_", "VAL_", "GLOBAL_TTT_",
                  "PHASED_TTT_", "ROPE_", "LOOP_", "EMBED_", "MATRIX_", "ATTN_", "MLP_", "SMEAR_", "SPARSE_ATTN_",
                  "GATED_ATTN_", "QK_", "TIED_EMBED_", "WARMDOWN_", "WARMUP_", "SEQ_CHANGE_", "PARALLEL_", "XSA_",
                  "MIDRUN_", "COMPILE_SHAPE_", "DYNAMO_", "NUM_LOOPS", "NUM_KV", "ENABLE_LOOP", "ASYM_", "LOGIT_")

ALL_NAMES = sorted({*MAPPED, *SPECIAL, *FIXED, *IGNORED})


def _is_ours(name: str) -> bool:
    return name in ALL_NAMES or name.startswith(KNOWN_PREFIXES)


def _check_known(name: str) -> None:
    if name not in ALL_NAMES:
        close = difflib.get_close_matches(name, ALL_NAMES, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"environment variable {name} is not a knob of the seed{hint}")


def ignored_knobs(environ: Mapping[str, str]) -> list[str]:
    """'NAME: why' for each set variable the seed reads but pgolf has no use for."""
    return [f"{k}: {IGNORED[k]}" for k in sorted(environ) if k in IGNORED]


def config_from_env(environ: Mapping[str, str], base: RunConfig) -> RunConfig:
    """`base` with every seed knob in `environ` applied (see the module docstring for the rules)."""
    return resolve(base, env=env_overrides(environ, base))


def env_overrides(environ: Mapping[str, str], base: RunConfig) -> dict[str, Any]:
    """The config fields the seed knobs in `environ` set, as `config.resolve` takes them."""
    env = {k: v for k, v in environ.items() if _is_ours(k)}
    for name in env:
        _check_known(name)
    for name, expected in FIXED.items():
        if name in env and env[name].strip().lower() != expected and not _same_number(env[name], expected):
            raise ConfigError(f"{name}={env[name]!r}: pgolf implements only {name}={expected!r} (the seed's setting)")
    flat: dict[str, Any] = {}
    for name, (targets, parse) in MAPPED.items():
        if name in env:
            value = parse(name, env[name])
            for t in targets:
                flat[t] = value
    _apply_seq_len(env, base, flat)
    _apply_ttt_mask(env, base, flat)
    if "TTT_SHORT_SCORE_FIRST_ENABLED" in env and not _bool("TTT_SHORT_SCORE_FIRST_ENABLED",
                                                            env["TTT_SHORT_SCORE_FIRST_ENABLED"]):
        flat["ttt.short_chunk_steps"] = ()
    _raise_rope_length(base, flat)
    return flat


def _same_number(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def _apply_seq_len(env: dict[str, str], base: RunConfig, flat: dict[str, Any]) -> None:
    """TRAIN_SEQ_SCHEDULE (the seed's string form) and TRAIN_SEQ_LEN, which must be its largest stage.

    As in the seed, an empty schedule means one stage of TRAIN_SEQ_LEN.
    """
    seq_len = _int("TRAIN_SEQ_LEN", env["TRAIN_SEQ_LEN"]) if "TRAIN_SEQ_LEN" in env else None
    if "TRAIN_SEQ_SCHEDULE" in env:
        stages = parse_seq_schedule(env["TRAIN_SEQ_SCHEDULE"], seq_len or base.train.max_seq_len)
    elif seq_len is not None:
        stages = base.train.seq_len_stages
    else:
        return
    if seq_len is not None and max(n for n, _ in stages) != seq_len:
        raise ConfigError(f"TRAIN_SEQ_LEN={seq_len} must equal the largest stage of TRAIN_SEQ_SCHEDULE "
                          f"({max(n for n, _ in stages)})")
    flat["train.seq_len_stages"] = stages


def _apply_ttt_mask(env: dict[str, str], base: RunConfig, flat: dict[str, Any]) -> None:
    """TTT_Q_LORA / TTT_V_LORA refine TTT_MASK, as in the seed (the mask sets their defaults)."""
    if flat.get("ttt.mask") in ("", "baseline_all"):  # the seed's spellings of "all"
        flat["ttt.mask"] = "all"
    mask = flat.get("ttt.mask", base.ttt.mask)
    q = mask in ("all", "no_v")
    v = mask in ("all", "no_q")
    if "TTT_Q_LORA" in env:
        q = _bool("TTT_Q_LORA", env["TTT_Q_LORA"])
    if "TTT_V_LORA" in env:
        v = _bool("TTT_V_LORA", env["TTT_V_LORA"])
    if "TTT_Q_LORA" in env or "TTT_V_LORA" in env:
        flat["ttt.mask"] = {(True, True): "all", (False, True): "no_q", (True, False): "no_v",
                            (False, False): "no_qv"}[(q, v)]
    if "TTT_K_LORA" in env and not _bool("TTT_K_LORA", env["TTT_K_LORA"]):
        if not (q and v):  # #2135's layout: K off with Q and V always on
            raise ConfigError("TTT_K_LORA=0: pgolf implements K off only with Q and V on (#2135's layout)")
        flat["ttt.mask"] = "no_k"


def _raise_rope_length(base: RunConfig, flat: dict[str, Any]) -> None:
    """The seed's RoPE cache grows on demand; pgolf's is sized by model.max_seq_len, so grow it."""
    lengths = [base.model.max_seq_len]
    if "train.seq_len_stages" in flat:
        lengths += [n for n, _ in flat["train.seq_len_stages"]]
    lengths += [flat[k] for k in ("eval.eval_seq_len", "ttt.eval_seq_len") if k in flat]
    if max(lengths) > base.model.max_seq_len:
        flat["model.max_seq_len"] = max(lengths)


# --------------------------------------------------------------------------- a record log's hyperparameter block
# Names a seed-style dump prints that configure nothing: the run's identity, paths and processes.
_DUMP_BOOKKEEPING = {
    "run_id": "the run's id", "logfile": "the log's path", "distributed": "process bookkeeping",
    "world_size": "process bookkeeping (the GPU count; pgolf takes it from torchrun)", "rank": "process bookkeeping",
    "local_rank": "process bookkeeping", "is_main_process": "process bookkeeping",
    "grad_accum_steps": "derived from the world size (8 / world size)", "datasets_dir": "path: use --data",
    "train_files": "path: use --data", "val_files": "path: use --data", "val_bytes_files": "path: use --data",
    "model_path": "path: the run directory names it", "quantized_model_path": "path: the run directory names it",
}


def _dump_value(raw: str) -> str:
    """A dump's printed value as the environment would spell it (Python's True/False -> 1/0)."""
    v = raw.strip()
    return {"True": "1", "False": "0"}.get(v, v)


def _literal(raw: str):
    import ast

    try:
        return ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        return raw.strip()


def from_hyperparameters(hp: Mapping[str, str], base: RunConfig) -> tuple[RunConfig, list[str]]:
    """A record log's hyperparameter block as a config, and one 'name: why' line per entry it cannot map.

    Two spellings: pgolf's own log prints dotted config fields (`model.num_layers: 4`), set as they are;
    the challenge's scripts print their attributes (`num_layers: 11`), which are the environment knobs in
    lower case and go through the same mapping as `pgolf train --env`. Nothing is dropped silently: every
    entry either lands on a field (or is a switch at pgolf's only setting) or is listed.
    """
    from pgolf.config import SECTIONS, flatten, merge, nest

    unmapped: list[str] = []
    dotted = any(k.split(".", 1)[0] in SECTIONS and "." in k for k in hp)
    if dotted:
        fields = flatten(base.to_dict())
        flat: dict[str, Any] = {}
        for key, raw in hp.items():
            if key in fields:
                flat[key] = _literal(raw) if key != "preset" else raw.strip()
            else:
                unmapped.append(f"{key}: not a field of this pgolf's config")
        return RunConfig.from_dict(merge(base.to_dict(), nest(flat))), unmapped
    env: dict[str, str] = {}
    for key, raw in hp.items():
        name, value = key.upper(), _dump_value(raw)
        if key in _DUMP_BOOKKEEPING:
            unmapped.append(f"{key}: {_DUMP_BOOKKEEPING[key]}")
        elif name in IGNORED:
            unmapped.append(f"{key}: {IGNORED[name]}")
        elif name in FIXED:
            if value.lower() != FIXED[name] and not _same_number(value, FIXED[name]):
                unmapped.append(f"{key}: {raw.strip()!r}, but pgolf implements only {FIXED[name]!r}")
        elif name in MAPPED or name in SPECIAL:
            env[name] = value
        else:
            unmapped.append(f"{key}: not a knob pgolf knows")
    return resolve(base, env=env_overrides(env, base)), unmapped
