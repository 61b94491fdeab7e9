#!/usr/bin/env python
"""Write the seed-parity fixtures (tests/fixtures/seed/) by running the seed's own code on CPU.

The seed is PR #2139's `train_gpt.py` (public code, never part of this
repository). It is imported unmodified through a CPU harness (`seed_cpu.py`,
which swaps FlashAttention 3 for SDPA and Triton for inert stubs), on one fixed
tiny configuration with every feature on: depth recurrence, parallel lanes,
XSA, SmearGate, the sparse attention gate, partial RoPE, LoRA TTT, the peer
ensemble and phased global SGD. Only numbers are written: hashes, sums and
small arrays. `tests/test_seed_parity.py` compares pgolf against them without
the seed.

    .venv/bin/python tools/seed_fixtures.py --seed-script /tmp/seedwork/seed_train_gpt.py \\
        --harness /tmp/seedwork [--only init,gptq,pergroup,train,ttt,bf16]

Everything here that builds an input (weights, Hessians, documents, batches)
is also imported by the test, so both sides start from the same tensors; each
fixture records a digest of its inputs, and the test first checks that its
inputs still hash the same (a changed RNG stream is then reported as such,
not as a parity failure).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import zlib
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "seed"

# The tiny configuration, once in the seed's environment knobs and once as pgolf overrides
# on the `tiny` preset (which already has these model shapes). TTT knobs that vary per
# fixture are set on the seed's Hyperparameters instance, not here.
SEED_ENV = dict(
    NUM_LAYERS="4", MODEL_DIM="64", NUM_HEADS="4", NUM_KV_HEADS="2", MLP_MULT="2", VOCAB_SIZE="512",
    ROPE_DIMS="8", LOOP_START="1", LOOP_END="2", NUM_LOOPS="2", PARALLEL_START_LAYER="3", XSA_LAST_N="4",
    GATE_WINDOW="8", TRAIN_SEQ_LEN="128", TRAIN_SEQ_SCHEDULE="128@1.000", EVAL_SEQ_LEN="64",
    TTT_EVAL_SEQ_LEN="64", TTT_BATCH_SIZE="4", TTT_CHUNK_SIZE="16", TTT_SHORT_SCORE_FIRST_STEPS="16:4,64:8",
    TTT_LORA_RANK="4", TTT_LORA_ALPHA="8", CASEOPS_ENABLED="1", FUSED_CE_ENABLED="0", SEED="42",
    TORCHDYNAMO_DISABLE="1",
)
TTT_BASE = {
    "ttt.eval_seq_len": 64, "ttt.batch_size": 4, "ttt.chunk_size": 16, "ttt.short_chunk_steps": [[16, 4], [64, 8]],
    "ttt.lora_rank": 4, "ttt.lora_alpha": 8.0, "ttt.local_lr_mult": 0.75, "ttt.peer_seed": 42,
    "ttt.phased_num_phases": 1, "ttt.peer_blend_w": 0.8, "train.seed": 42, "eval.eval_seq_len": 64,
    # The seed ran in one process with its work-stealing queue; static with 1 virtual rank gives the same bits.
    "ttt.schedule": "dynamic",
}

# The TTT cases: own-only, the seed's peer ensemble, and global SGD after the first batch
# (P=2: the seed and pgolf train the same documents in the same order) and after two
# batches (P=6: the seed's document selection and order differ from pgolf's).
TTT_CASES = {
    "own": dict(peer_k=1, prefix_docs=0),
    "seed_k3": dict(peer_k=3, prefix_docs=0),
    "sgd_p2": dict(peer_k=3, prefix_docs=2),
    "sgd_p6": dict(peer_k=3, prefix_docs=6),
}
# A large LoRA LR so a few chunks move the NLLs; the entropy threshold near the median entropy of
# these weights, so about half of the covered targets are routed to the peers.
TTT_LR, TTT_WD, TTT_THRESH, GLOBAL_LR, GLOBAL_CHUNK = 0.01, 0.25, 5.55, 0.05, 128
TTT_DOC_LENGTHS = [5, 9, 12, 20, 33, 47, 60, 64, 70, 90, 110, 150, 30, 14, 8, 201, 65, 3]

TRAIN_SEQ = 128
TRAIN_DOCS_PER_STEP = [[40, 30, 58], [128], [17, 60, 51]]


# ----------------------------------------------------------------------------- digests
def digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's bytes in its own dtype (C order)."""
    a = t.detach().cpu().contiguous()
    if a.dtype == torch.bfloat16:
        a = a.view(torch.int16)
    return hashlib.sha256(a.numpy().tobytes()).hexdigest()


def digest_many(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(digest(t).encode())
    return h.hexdigest()


def summary(t: torch.Tensor) -> dict:
    """Exact digest plus float64 sums and the first values, for readable mismatch reports."""
    f = t.detach().double().flatten()
    return {"sha256": digest(t.float()), "sum": float(f.sum()), "abs_sum": float(f.abs().sum()),
            "head": [float(v) for v in f[:4]]}


# ----------------------------------------------------------------------------- pgolf config
def pg_config(ttt: dict | None = None):
    from pgolf.config import load_preset

    cfg = load_preset("tiny")
    over = dict(TTT_BASE)
    over.update(ttt or {})
    return cfg.replace(over)


def ttt_overrides(peer_k: int, prefix_docs: int) -> dict:
    return {"ttt.lora_lr": TTT_LR, "ttt.weight_decay": TTT_WD, "ttt.peer_mode": "pr2139" if peer_k > 1 else "off",
            "ttt.peer_k": peer_k, "ttt.peer_conf_threshold": TTT_THRESH,
            "ttt.phased_prefix_docs": prefix_docs, "ttt.global_chunk_tokens": GLOBAL_CHUNK,
            "ttt.global_lr": GLOBAL_LR}


# ----------------------------------------------------------------------------- shared inputs
def model_weights(model_cfg) -> dict[str, torch.Tensor]:
    """Unbanked weights (the record's names) for the tiny model, every tensor non-trivial.

    At init the out/down projections and all gates are zero, which would hide most of
    the model from a comparison; here every tensor gets a seeded value: the random
    matrices ~ N(0, 1/fan_in), the zero-init ones small, the embedding wider (so the
    model is far from uniform), the scalar controls their init value plus noise.
    """
    from pgolf.checkpoint import unbank_state_dict
    from pgolf.model import GPT

    torch.manual_seed(0)  # only the constant inits are used below; every random tensor is redrawn
    init = unbank_state_dict(GPT(model_cfg).state_dict(), model_cfg)
    g = torch.Generator().manual_seed(1234)
    out = {}
    for name, t in init.items():
        noise = torch.randn(t.shape, generator=g)
        if name == "tok_emb.weight":
            out[name] = noise * 0.15
        elif t.ndim == 2 and t.shape[1] >= 16:
            scale = 1.0 if any(k in name for k in ("c_q", "c_k", "c_v", "mlp.fc")) else 0.3
            out[name] = noise * (scale / math.sqrt(t.shape[1]))
        elif "gate" in name or "smear" in name:
            out[name] = noise * 0.5
        else:
            out[name] = t.float() + 0.05 * noise
    return out


def ttt_docs() -> tuple[torch.Tensor, torch.Tensor]:
    """A validation stream of 18 documents (BOS-led, repetitive so TTT can learn) and per-token bytes."""
    g = torch.Generator().manual_seed(7)
    ids: list[int] = []
    for n in TTT_DOC_LENGTHS:
        period = 7 + int(torch.randint(0, 9, (1,), generator=g))
        base = torch.randint(2, 512, (period,), generator=g)
        body = base.repeat(n // period + 2)[:n]
        noise = torch.rand(n, generator=g) < 0.3
        body = torch.where(noise, torch.randint(2, 512, (n,), generator=g), body)
        ids += [1] + body.tolist()
    tokens = torch.tensor(ids, dtype=torch.int64)
    tbytes = torch.randint(1, 5, (tokens.numel(),), generator=g, dtype=torch.int32)
    tbytes[tokens == 1] = 0
    return tokens, tbytes


def lora_a(site: str, slot: int, row: int, rank: int, n_in: int) -> torch.Tensor:
    """The LoRA A used on both sides (U(±1/√in), seeded per site/slot/row): the two draw A in a
    different order from the global RNG, which is a documented, harmless difference."""
    g = torch.Generator().manual_seed(zlib.crc32(f"{site}/{slot}/{row}".encode()))
    bound = 1.0 / math.sqrt(n_in)
    return (torch.rand(rank, n_in, generator=g) * 2 - 1) * bound


def gptq_inputs() -> tuple[dict, dict, dict]:
    """(state dict, Hessians, act_rms): four matrices above the 65,536 passthrough size, a gate, a vector.

    The Hessians come from inputs with decaying spectra and a few loud channels, so the
    damped H is ill-conditioned enough that a float32 and a float64 factorization give
    different symbols.
    """
    g = torch.Generator().manual_seed(2139)
    shapes = {"tok_emb.weight": (544, 128), "blocks.0.attn.c_q.weight": (520, 128),
              "blocks.0.mlp.fc.weight": (528, 128), "blocks.0.mlp.proj.weight": (128, 768)}
    sd, hess, rms = {}, {}, {}
    for name, (rows, cols) in shapes.items():
        M = torch.randn(cols, cols, generator=g) * torch.linspace(1, 0.01, cols)[None, :]
        X = torch.randn(4096, cols, generator=g) @ M.T
        X[:, :8] *= 5
        hess[name] = (X.T @ X) / 16
        rms[name] = X.pow(2).mean(dim=0).sqrt()
        sd[name] = torch.randn(rows, cols, generator=g) * 0.02
    sd["blocks.0.attn.attn_gate_w"] = torch.randn(4, 8, generator=g) * 0.3
    sd["blocks.0.attn.q_gain"] = torch.full((4,), 5.25) + torch.randn(4, generator=g) * 0.01
    return sd, hess, rms


def pergroup_inputs() -> dict[str, torch.Tensor]:
    """int8 q-tensors of every role (two layers) whose rows tie often under L1 (few, small values)."""
    g = torch.Generator().manual_seed(2846)
    shapes = {"tok_emb.weight.q": (96, 16)}
    for i in range(2):
        shapes.update({f"blocks.{i}.attn.c_q.weight.q": (32, 12), f"blocks.{i}.attn.c_k.weight.q": (16, 12),
                       f"blocks.{i}.attn.c_v.weight.q": (16, 12), f"blocks.{i}.attn.proj.weight.q": (12, 32),
                       f"blocks.{i}.mlp.fc.weight.q": (64, 10), f"blocks.{i}.mlp.proj.weight.q": (10, 64)})
    out = {}
    for name, shape in shapes.items():
        v = torch.randint(-1, 2, shape, generator=g) * (torch.rand(shape, generator=g) < 0.35)
        out[name] = v.to(torch.int8)
    return out


def train_batches(vocab: int = 512) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(x [1, T], y [1, T], cu_seqlens int32) per step: documents packed into one row with BOS at each start."""
    g = torch.Generator().manual_seed(4098)
    out = []
    for lens in TRAIN_DOCS_PER_STEP:
        ids = []
        for n in lens:
            ids += [1] + torch.randint(2, vocab, (n - 1,), generator=g).tolist()
        ids.append(1)
        t = torch.tensor(ids, dtype=torch.int64)
        x, y = t[:-1][None], t[1:][None]
        cu = torch.tensor([0, *np.cumsum(lens).tolist()], dtype=torch.int32)
        out.append((x, y, cu))
    return out


def train_hparams(step: int) -> dict:
    """LR scale and Muon momentum of real step `step` (0-based) under the seed's momentum warmup."""
    frac = min(step / 1500, 1.0)
    return {"lr_scale": 1.0, "muon_momentum": (1 - frac) * 0.92 + frac * 0.97}


# ============================================================================= seed side
def load_seed(seed_script: Path, harness: Path):
    os.environ.update(SEED_ENV)
    os.environ.setdefault("ARTIFACT_DIR", "/tmp/seed_fixtures_logs")
    os.makedirs(os.environ["ARTIFACT_DIR"], exist_ok=True)
    sys.path.insert(0, str(harness))
    import seed_cpu

    seed_cpu.SEED_PATH = str(seed_script)
    m = seed_cpu.load_seed()
    h = m.Hyperparameters()
    m.set_logging_hparams(h)
    return seed_cpu, m, h


def seed_model_from(seed_cpu, m, h, flat: dict[str, torch.Tensor], loop: bool):
    _, model = seed_cpu.build_seed_model(m, loop=loop)
    kv_dim = h.num_kv_heads * (h.model_dim // h.num_heads)
    sd = m._rebank_state_dict({k: v.clone() for k, v in flat.items()}, h.num_layers, h.model_dim, kv_dim,
                              int(h.mlp_mult * h.model_dim))
    model.load_state_dict(sd, strict=True)
    return model


def fixture_init(seed_cpu, m, h) -> None:
    """(a) The initial weights of seed 42, per unbanked tensor."""
    torch.manual_seed(42)
    _, model = seed_cpu.build_seed_model(m)
    flat = m._unbank_state_dict(model.state_dict(), h.num_layers)
    out = {"seed": 42, "tensors": {k: summary(v) for k, v in flat.items()}}
    (FIXTURES / "init_seed42.json").write_text(json.dumps(out, indent=0) + "\n")
    print(f"init: {len(flat)} tensors")


def fixture_gptq(m, h) -> None:
    """(b) The seed's gptq_mixed_quantize on fixed weights/Hessians: every stored tensor, exactly."""
    sd, hess, rms = gptq_inputs()
    result, meta = m.gptq_mixed_quantize(sd, hess, rms, h)
    arrays = {}
    for k, v in result.items():
        arrays[k] = v.view(torch.int16).numpy() if v.dtype == torch.float16 else v.numpy()
    np.savez_compressed(FIXTURES / "gptq.npz", **arrays)
    info = {"inputs_sha256": digest_many([*sd.values(), *hess.values(), *rms.values()]),
            "meta": meta, "dtypes": {k: str(v.dtype).removeprefix("torch.") for k, v in result.items()}}
    (FIXTURES / "gptq.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    print("gptq:", meta)


def fixture_pergroup(m) -> None:
    """(c) The seed's per-group raw streams and permutations (its lrzip step swapped for identity)."""
    import brotli

    q = pergroup_inputs()
    orders = {k: m._similarity_sort_l1(v.numpy()).astype(np.int64) for k, v in q.items()
              if any(r in k for r in ("tok_emb", "c_q", "mlp.fc"))}
    original = m._lrzip_compress
    m._lrzip_compress = lambda data, tmpdir, label: data
    try:
        blob = m._serialize_pergroup(dict(q), {}, 2, "/tmp")
    finally:
        m._lrzip_compress = original
    streams = m._unpack_streams(blob)
    groups = {key: streams[i] for i, key in enumerate(m._GROUP_ORDER)}
    perms = brotli.decompress(streams[-1]) if streams[-1] else b""
    out = {"inputs_sha256": digest_many(q.values()),
           "orders": {k: v.tolist() for k, v in orders.items()},
           "groups": {k: {"sha256": hashlib.sha256(v).hexdigest(), "len": len(v)} for k, v in groups.items()},
           "perms_sha256": hashlib.sha256(perms).hexdigest(), "perms_len": len(perms)}
    (FIXTURES / "pergroup.json").write_text(json.dumps(out, indent=1) + "\n")
    print("pergroup:", {k: v["len"] for k, v in out["groups"].items()})


class _NoStream:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def wait_stream(self, other):
        pass


def fixture_train(seed_cpu, m, h) -> None:
    """(d) The seed's first optimizer steps (fp32 model, CPU) from fixed weights and batches."""
    flat = model_weights(pg_config().model)
    model = seed_model_from(seed_cpu, m, h, flat, loop=True)
    model.train()
    saved = torch.cuda.Stream, torch.cuda.current_stream, torch.cuda.stream
    torch.cuda.Stream = lambda *a, **k: _NoStream()  # the seed overlaps AdamW on a side stream
    torch.cuda.current_stream = lambda *a, **k: _NoStream()
    torch.cuda.stream = lambda s: _NoStream()
    try:
        opts = m.Optimizers(h, model)
        clip_params = [p for p in model.parameters() if p.requires_grad]
        losses, steps = [], []
        for step, (x, y, cu) in enumerate(train_batches(h.vocab_size)):
            hp = train_hparams(step)
            loss = model(x, y, cu_seqlens=cu, max_seqlen=TRAIN_SEQ)
            loss.backward()
            for group in opts.optimizer_muon.param_groups:
                group["momentum"] = hp["muon_momentum"]
            for opt in opts:
                for group in opt.param_groups:
                    group["lr"] = group["base_lr"] * hp["lr_scale"]
            torch.nn.utils.clip_grad_norm_(clip_params, h.grad_clip_norm)
            opts.step(distributed=False)
            losses.append(float(loss.detach()))
            flat_now = m._unbank_state_dict(model.state_dict(), h.num_layers)
            steps.append({k: summary(v) for k, v in flat_now.items()})
    finally:
        torch.cuda.Stream, torch.cuda.current_stream, torch.cuda.stream = saved
    out = {"inputs_sha256": digest_many([*flat.values(), *(t for b in train_batches(h.vocab_size) for t in b)]),
           "losses": losses, "steps": steps,
           "hparams": {"matrix_lr": h.matrix_lr, "scalar_lr": h.scalar_lr, "tied_embed_lr": h.tied_embed_lr,
                       "muon_wd": h.muon_wd, "adam_wd": h.adam_wd, "embed_wd": h.embed_wd,
                       "grad_clip_norm": h.grad_clip_norm, "muon_backend_steps": h.muon_backend_steps}}
    (FIXTURES / "train.json").write_text(json.dumps(out, indent=0) + "\n")
    print("train losses:", losses)


def eval_rows() -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) [2, 128]: the first 257 tokens of the TTT stream as two rows (documents cross rows and BOS)."""
    tokens, _ = ttt_docs()
    t = tokens[:257]
    return torch.stack([t[:128], t[128:256]]), torch.stack([t[1:129], t[129:257]])


def row_nll(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1),
                                             reduction="none").reshape(y.shape)


def fixture_bf16(seed_cpu, m, h) -> None:
    """Per-token NLL of the seed's forward_logits in fp32, and under its CUDA dtype policy emulated on CPU:
    GPT(h).bfloat16() + restore_fp32_params (tok_emb stays bf16), bf16 autocast, bf16 logits."""
    flat = model_weights(pg_config().model)
    x, y = eval_rows()
    model = seed_model_from(seed_cpu, m, h, flat, loop=True).eval()
    with torch.no_grad():
        nll32 = row_nll(model.forward_logits(x), y)
        model = model.bfloat16()
        m.restore_fp32_params(model)
        assert model.tok_emb.weight.dtype == torch.bfloat16
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model.forward_logits(x)
        nll16 = row_nll(logits, y)
    np.savez_compressed(FIXTURES / "bf16.npz", nll_fp32=nll32.numpy(), nll_bf16=nll16.numpy(),
                        logits_dtype=np.array(str(logits.dtype)))
    (FIXTURES / "bf16.json").write_text(json.dumps({"inputs_sha256": digest_many([*flat.values(), x, y])}) + "\n")
    print("bf16: mean |bf16 - fp32|", float((nll16 - nll32).abs().mean()))


def _seed_ttt_run(seed_cpu, m, h, flat, tokens, tbytes, peer_k: int, prefix_docs: int) -> dict:
    """The seed's eval_val_ttt_phased with per-token NLL capture (own score and final ensemble score)."""
    from types import SimpleNamespace

    h.ttt_lora_lr, h.ttt_weight_decay = TTT_LR, TTT_WD
    h.ttt_peer_ensemble_k, h.ttt_peer_conf_threshold, h.ttt_peer_conf_blend_w = peer_k, TTT_THRESH, 0.8
    h.phased_ttt_prefix_docs, h.phased_ttt_num_phases = prefix_docs, 1
    h.global_ttt_chunk_tokens, h.global_ttt_lr = GLOBAL_CHUNK, GLOBAL_LR
    model = seed_model_from(seed_cpu, m, h, flat, loop=True)
    model.eval()
    N = tokens.numel()
    own = torch.full((N,), float("nan"), dtype=torch.float64)
    final = torch.full((N,), float("nan"), dtype=torch.float64)
    routed = torch.zeros(N, dtype=torch.int64)
    original_acc = m._accumulate_bpb

    def capture_own(ptl, x, y, chunk_offsets, chunk_lens, pos_idx, *a, **k):
        starts = sys._getframe(1).f_locals["tok_starts"]
        for b in range(ptl.shape[0]):
            off, ln = int(chunk_offsets[b]), int(chunk_lens[b])
            for j in range(off, off + ln):
                own[int(starts[b]) + 1 + j] = float(ptl[b, j])
        return original_acc(ptl, x, y, chunk_offsets, chunk_lens, pos_idx, *a, **k)

    # The blended NLL exists only as a local of eval_val_ttt_phased: read it on the line that
    # counts a covered batch.
    with open(m.__file__) as f:
        line_no = next(i + 1 for i, line in enumerate(f) if "ens_batches_covered += 1" in line)
    code = m.eval_val_ttt_phased.__code__

    def local_trace(frame, event, arg):
        if event == "line" and frame.f_lineno == line_no:
            L = frame.f_locals
            for b in range(L["ens_nll"].shape[0]):
                for t in range(L["pred_lens"][b]):
                    p = int(L["doc_starts_cpu"][b]) + 1 + t
                    final[p] = float(L["ens_nll"][b, t])
                    routed[p] += int(L["uncertain"][b, t])
        return local_trace

    def global_trace(frame, event, arg):
        return local_trace if frame.f_code is code else None

    original_init = m.BatchedTTTLoRA.__init__

    def init_with_fixed_a(self, bsz, model_, rank, **kw):
        original_init(self, bsz, model_, rank, **kw)
        with torch.no_grad():
            mods = [("head", 0, self.lm_head_lora)]
            for site, lst in (("q", self.q_loras), ("k", self.k_loras), ("v", self.v_loras),
                              ("mlp", self.mlp_loras), ("o", self.o_loras)):
                mods += [(site, i, mod) for i, mod in enumerate(lst or [])]
            for site, slot, mod in mods:
                for b in range(bsz):
                    mod.A[b].copy_(lora_a(site, slot, b, mod.A.shape[1], mod.A.shape[2]))

    val = SimpleNamespace(val_tokens=tokens.clone(), val_bytes=tbytes.clone(), caseops_enabled=True,
                          base_bytes_lut=None, has_leading_space_lut=None, is_boundary_token_lut=None)
    m._accumulate_bpb = capture_own
    m.BatchedTTTLoRA.__init__ = init_with_fixed_a
    sys.settrace(global_trace)
    try:
        loss, bpb = m.eval_val_ttt_phased(
            h, model, torch.device("cpu"), val,
            lambda x, y, lora: model.forward_ttt(x, y, lora=lora),
            lambda x, y, lora: model.forward_ttt(x, y, lora=lora, return_entropy=True))
    finally:
        sys.settrace(None)
        m._accumulate_bpb = original_acc
        m.BatchedTTTLoRA.__init__ = original_init
    return {"loss": float(loss), "bpb": float(bpb), "nll_own": own[1:].numpy(), "nll_final": final[1:].numpy(),
            "routed": int(routed.sum()), "covered": int((~torch.isnan(final[1:])).sum())}


def fixture_ttt(seed_cpu, m, h) -> None:
    """(e) Per-token TTT NLLs of the seed (fp32) for the cases in TTT_CASES."""
    flat = model_weights(pg_config().model)
    tokens, tbytes = ttt_docs()
    arrays, info = {}, {"inputs_sha256": digest_many([*flat.values(), tokens, tbytes]), "cases": {}}
    for case, kw in TTT_CASES.items():
        r = _seed_ttt_run(seed_cpu, m, h, flat, tokens, tbytes, **kw)
        arrays[case + "_own"] = r.pop("nll_own")
        if kw["peer_k"] > 1:
            arrays[case + "_final"] = r.pop("nll_final")
        else:
            r.pop("nll_final")
        info["cases"][case] = {**kw, **r}
        print("ttt", case, info["cases"][case])
    np.savez_compressed(FIXTURES / "ttt.npz", **arrays)
    (FIXTURES / "ttt.json").write_text(json.dumps(info, indent=1) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed-script", required=True, type=Path, help="the seed's train_gpt.py (PR #2139)")
    ap.add_argument("--harness", required=True, type=Path, help="folder holding seed_cpu.py")
    ap.add_argument("--only", default="init,gptq,pergroup,train,ttt,bf16")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    seed_cpu, m, h = load_seed(args.seed_script.resolve(), args.harness.resolve())
    only = set(args.only.split(","))
    if "init" in only:
        fixture_init(seed_cpu, m, h)
    if "gptq" in only:
        fixture_gptq(m, h)
    if "pergroup" in only:
        fixture_pergroup(m)
    if "train" in only:
        fixture_train(seed_cpu, m, h)
    if "ttt" in only:
        fixture_ttt(seed_cpu, m, h)
    if "bf16" in only:
        fixture_bf16(seed_cpu, m, h)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
