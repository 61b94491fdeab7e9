"""pgolf.model: exact parameter counts and names, schedules, causality, document isolation, hooks, init."""

from __future__ import annotations

import math

import pytest
import torch

from pgolf.checkpoint import unbank_state_dict
from pgolf.config import load_preset
from pgolf.errors import ConfigError
from pgolf.model import (GPT, BOS_ID, CausalSelfAttention, apply_partial_rope, rope_cos_sin,
                         split_schedule)


def meta_model(preset: str, **overrides) -> GPT:
    cfg = load_preset(preset, {f"model.{k}": v for k, v in overrides.items()}).model
    with torch.device("meta"):
        return GPT(cfg)


def randomized(model: GPT, seed: int = 0) -> GPT:
    """Every weight random (the real init zeroes out-projections and gates, which would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("softcap_"):
                continue
            if "bank" in name or name == "tok_emb.weight":
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
            else:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture
def model(tiny_cfg):
    m = randomized(GPT(tiny_cfg.model))
    m.set_looping(True)
    return m


def tokens(n: int, vocab: int, seed: int = 1, bos_at=()) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (n,), generator=g)
    for i in bos_at:
        ids[i] = BOS_ID
    return ids


# --------------------------------------------------------------------------- counts and names
def test_parameter_counts_exact():
    record, seed, baseline = meta_model("record"), meta_model("seed"), meta_model("baseline")
    def count_parameters(m):
        return sum(p.numel() for p in m.parameters())

    assert count_parameters(record) == 35_945_673
    assert count_parameters(seed) == 35_945_671
    # The challenge's naive baseline logs model_params:17059912 (records/.../2026-03-17_NaiveBaseline).
    assert count_parameters(baseline) == 17_059_912
    matrices = sum(p.numel() for n, p in seed.named_parameters() if n == "tok_emb.weight" or "bank" in n)
    assert matrices == 35_913_728
    assert count_parameters(seed) - matrices == 31_943


# The record's state dict as its `_unbank_state_dict` produces it (names and shapes read from
# records/track_10min_16mb/2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611/train_gpt.py
# and #2014's softcap_pos/neg), for the record config: L=11, d=512, kv=256, hidden=2048, V=8192.
RECORD_PER_LAYER = {
    "attn.c_q.weight": (512, 512),
    "attn.c_k.weight": (256, 512),
    "attn.c_v.weight": (256, 512),
    "attn.proj.weight": (512, 512),
    "mlp.fc.weight": (2048, 512),
    "mlp.proj.weight": (512, 2048),
    "attn_scale": (512,),
    "mlp_scale": (512,),
    "resid_mix": (2, 512),
    "attn.q_gain": (8,),
    "attn.attn_gate_w": (8, 12),
}
RECORD_GLOBAL = {
    "tok_emb.weight": (8192, 512),
    "skip_weights": (8, 512),
    "skip_gates": (8, 512),
    "parallel_post_lambdas": (11, 2, 2),
    "parallel_resid_lambdas": (11, 2),
    "smear_gate.weight": (1, 12),
    "smear_lambda": (1,),
    "softcap_pos": (),
    "softcap_neg": (),
}
RECORD_BANKS = {
    "qo_bank": (22, 512, 512),
    "kv_bank": (22, 256, 512),
    "mlp_up_bank": (11, 2048, 512),
    "mlp_down_bank": (11, 512, 2048),
}


def test_exported_record_names_and_shapes():
    model = meta_model("record")
    expected = dict(RECORD_GLOBAL)
    expected.update({f"blocks.{i}.{k}": v for i in range(11) for k, v in RECORD_PER_LAYER.items()})
    exported = unbank_state_dict(model.state_dict(), model.cfg)
    assert {k: tuple(t.shape) for k, t in exported.items()} == expected
    assert len(exported) == 130


def test_banked_names_match_record_final_model():
    """The record saves `base_model.state_dict()` (banked) as final_model.pt: same names as ours."""
    model = meta_model("record")
    expected = dict(RECORD_GLOBAL)
    expected.update(RECORD_BANKS)
    expected.update({f"blocks.{i}.{k}": v for i in range(11) for k, v in RECORD_PER_LAYER.items()
                     if not k.endswith(("c_q.weight", "c_k.weight", "c_v.weight", "proj.weight", "fc.weight"))})
    assert {k: tuple(t.shape) for k, t in model.state_dict().items()} == expected
    seed_names = set(meta_model("seed").state_dict())
    assert set(expected) - seed_names == {"softcap_pos", "softcap_neg"}


def test_disabled_features_have_no_parameters():
    names = set(meta_model("baseline").state_dict())
    assert not any(n.startswith(("smear_", "skip_gates", "parallel_", "softcap_")) or "attn_gate_w" in n
                   for n in names)
    assert "skip_weights" in names


# --------------------------------------------------------------------------- schedule
def test_record_layer_schedule():
    model = meta_model("record")
    assert model.layer_schedule() == ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10])
    model.set_looping(True)
    assert model.looping
    assert model.layer_schedule() == ([0, 1, 2, 3, 4, 5, 3, 4], [5, 3, 4, 5, 6, 7, 8, 9, 10])
    assert model.num_slots == 17 and model.num_skip_weights == 8
    model.set_looping(False)
    assert model.num_slots == 17  # TTT sizes its adapters for the looped schedule either way


def test_baseline_schedule_without_loops():
    cfg = load_preset("baseline").model
    assert split_schedule(cfg, True) == split_schedule(cfg, False) == ([0, 1, 2, 3], [4, 5, 6, 7, 8])
    assert meta_model("baseline").num_skip_weights == 4


def test_parallel_layer_before_sequential_is_config_error():
    # tiny looped decoder is [2, 1, 2, 3]: parallel from layer 2 would fall back to sequential at 1.
    with pytest.raises(ConfigError, match="model.parallel_start_layer"):
        meta_model("tiny", parallel_start_layer=2)


def test_looping_changes_the_function(model):
    ids = tokens(24, model.cfg.vocab_size)[None]
    looped = model(ids)
    model.set_looping(False)
    assert not torch.allclose(model(ids), looped)


# --------------------------------------------------------------------------- causality and isolation
def test_causal_dense(model):
    ids = torch.stack([tokens(32, model.cfg.vocab_size, seed=s, bos_at=(0, 13)) for s in (1, 2)])
    base = model(ids)
    j = 17
    ids2 = ids.clone()
    ids2[:, j] = (ids2[:, j] + 5) % model.cfg.vocab_size
    out = model(ids2)
    assert torch.equal(out[:, :j], base[:, :j])
    assert not torch.allclose(out[:, j:], base[:, j:])


def test_causal_packed(model):
    ids = tokens(40, model.cfg.vocab_size, bos_at=(0, 15, 31))[None]
    cu = torch.tensor([0, 15, 31, 40, 40], dtype=torch.int32)
    base = model(ids, cu_seqlens=cu, max_seqlen=16)
    for j in (5, 20, 35):
        ids2 = ids.clone()
        ids2[0, j] = (ids2[0, j] + 7) % model.cfg.vocab_size
        out = model(ids2, cu_seqlens=cu, max_seqlen=16)
        assert torch.equal(out[:, :j], base[:, :j])
        assert not torch.allclose(out[:, j], base[:, j])


def test_packed_documents_are_independent(model):
    """Doc A's tokens (its last one included) change nothing in doc B: catches a SmearGate BOS leak."""
    vocab = model.cfg.vocab_size
    doc_a, doc_b = tokens(12, vocab, seed=3, bos_at=(0,)), tokens(20, vocab, seed=4, bos_at=(0,))
    cu = torch.tensor([0, 12, 32], dtype=torch.int32)
    packed = model(torch.cat([doc_a, doc_b])[None], cu_seqlens=cu, max_seqlen=20)
    other_a = tokens(12, vocab, seed=5, bos_at=(0,))
    assert other_a[-1] != doc_a[-1]
    packed2 = model(torch.cat([other_a, doc_b])[None], cu_seqlens=cu, max_seqlen=20)
    assert torch.equal(packed2[:, 12:], packed[:, 12:])
    assert not torch.allclose(packed2[:, :12], packed[:, :12])
    # And doc B packed behind A scores as if it ran alone (RoPE only sees relative positions).
    alone = model(doc_b[None])
    torch.testing.assert_close(packed[:, 12:], alone, atol=1e-4, rtol=1e-4)


def test_smear_mixes_previous_token_except_at_bos(model):
    vocab = model.cfg.vocab_size
    ids = tokens(10, vocab, bos_at=(0, 5))[None]
    ids2 = ids.clone()
    ids2[0, 3] = (ids2[0, 3] + 1) % vocab  # token 4 sees token 3 through the smear even without attention
    ids2[0, 4] = (ids2[0, 4] + 1) % vocab  # token 5 is BOS: its logits must not move
    cu = torch.tensor([0, 5, 10], dtype=torch.int32)
    out, ref = model(ids2, cu_seqlens=cu), model(ids, cu_seqlens=cu)
    assert torch.equal(out[:, 5:], ref[:, 5:])
    assert not torch.allclose(out[:, 4], ref[:, 4])


# --------------------------------------------------------------------------- losses
def test_reductions_agree():
    cfg = load_preset("tiny", {"model.asym_logit_rescale": True}).model
    m = randomized(GPT(cfg))
    ids = tokens(33, cfg.vocab_size)[None]
    x, y = ids[:, :-1], ids[:, 1:]
    nll = m(x, y, reduction="none")
    assert nll.shape == (1, 32) and nll.dtype == torch.float32
    torch.testing.assert_close(nll.mean(), m(x, y), atol=1e-6, rtol=1e-6)
    logits = m(x)
    assert logits.dtype == torch.float32 and logits.abs().max() <= cfg.logit_softcap
    manual = torch.nn.functional.cross_entropy(logits[0], y[0], reduction="none")
    torch.testing.assert_close(nll[0], manual, atol=1e-6, rtol=1e-6)


def test_asym_softcap_only_on_the_scoring_path():
    cfg = load_preset("tiny", {"model.asym_logit_rescale": True}).model
    m = randomized(GPT(cfg))
    ids = tokens(17, cfg.vocab_size)[None]
    x, y = ids[:, :-1], ids[:, 1:]
    sym = load_preset("tiny").model
    m_sym = GPT(sym)
    m_sym.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("softcap_")})
    assert torch.equal(m(x), m_sym(x))  # inert at 30
    with torch.no_grad():
        m.softcap_pos.fill_(2.0)
    assert m(x).max() <= 2.0 + 1e-6
    assert torch.equal(m(x, y), m_sym(x, y))  # the training loss keeps the scalar cap, as the record
    assert not torch.allclose(m(x, y, reduction="none"), m_sym(x, y, reduction="none"))


def test_every_parameter_gets_a_gradient_except_the_asym_caps():
    cfg = load_preset("tiny", {"model.asym_logit_rescale": True}).model
    m = randomized(GPT(cfg))
    m.set_looping(True)
    ids = tokens(25, cfg.vocab_size, bos_at=(0, 9))[None]
    m(ids[:, :-1], ids[:, 1:]).backward()
    for name, p in m.named_parameters():
        if name.startswith("softcap_"):
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


# --------------------------------------------------------------------------- hooks
def test_observer_sees_every_matmul_input_record():
    model = meta_model("record")
    model.set_looping(True)
    seen: list[tuple[str, tuple[int, ...]]] = []
    with model.observe(lambda name, x: seen.append((name, tuple(x.shape)))):
        model(torch.zeros(1, 8, dtype=torch.long, device="meta"))
    assert model._observer is None
    assert len(seen) == 17 * 4 + 1  # every application of a looped layer, plus the head
    widths = {"attn.c_q.weight": 512, "attn.proj.weight": 512, "mlp.fc.weight": 512, "mlp.proj.weight": 2048}
    expected = {f"blocks.{i}.{k}": (1, 8, w) for i in range(11) for k, w in widths.items()}
    expected["tok_emb.weight"] = (1, 8, 512)
    assert dict(seen) == expected and len(expected) == 45
    # c_k/c_v share c_q's input, so the Hessian keys are exactly the 67 matrices of the export.
    hessian_keys = set(expected) | {n.replace("c_q", s) for n in expected if "c_q" in n for s in ("c_k", "c_v")}
    exported = unbank_state_dict(model.state_dict(), model.cfg)
    suffixes = (".c_q.weight", ".c_k.weight", ".c_v.weight", "proj.weight", "fc.weight")
    matrices = {k for k in exported if k == "tok_emb.weight" or k.endswith(suffixes)}
    assert len(hessian_keys) == 67 and hessian_keys == matrices


TINY_OUT_DIMS = {"q": 64, "k": 32, "v": 32, "o": 64, "mlp": 64, "head": 512}


class RecordingAdapters:
    """Zero deltas everywhere except a random one at (site, slot); records every call."""

    def __init__(self, site=None, slot=None, scale=0.0):
        self.site, self.slot, self.scale, self.calls = site, slot, scale, []

    def delta(self, site, slot, x):
        self.calls.append((site, slot, tuple(x.shape)))
        if self.site is None:
            return None
        out = torch.zeros(*x.shape[:-1], TINY_OUT_DIMS[site])
        if site == self.site and slot == self.slot:
            out = self.scale * torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
        return out


def test_adapters_protocol(model):
    ids = tokens(16, model.cfg.vocab_size)[None]
    base = model(ids)
    rec = RecordingAdapters(site="q", scale=0.0)  # zero deltas everywhere
    assert torch.equal(model(ids, adapters=rec), base)
    per_site = {}
    for site, slot, shape in rec.calls:
        per_site.setdefault(site, []).append(slot)
        assert shape == ((1, 16, 64))
    assert per_site == {**{s: list(range(8)) for s in ("q", "k", "v", "o", "mlp")}, "head": [0]}
    assert torch.equal(model(ids, adapters=RecordingAdapters()), base)  # None deltas
    for site in ("q", "k", "v", "o", "mlp", "head"):
        out = model(ids, adapters=RecordingAdapters(site=site, slot=0 if site == "head" else 5, scale=0.5))
        assert not torch.allclose(out, base), site


def test_adapter_delta_on_a_late_slot_leaves_earlier_slots_alone(model):
    """A delta at slot s only changes what runs from slot s on: earlier observed inputs are identical."""
    ids = tokens(12, model.cfg.vocab_size)[None]

    def collect(adapters):
        seen = []
        with model.observe(lambda n, x: seen.append(x.clone())):
            model(ids, adapters=adapters)
        return seen

    base = collect(None)
    moved = collect(RecordingAdapters(site="mlp", slot=6, scale=1.0))
    # 4 observations per slot; the delta joins after slot 6's MLP, so slots 0..6 are untouched.
    assert len(base) == len(moved) == 8 * 4 + 1
    assert all(torch.equal(a, b) for a, b in zip(base[:28], moved[:28]))
    assert not torch.equal(base[28], moved[28])


# --------------------------------------------------------------------------- math pieces and init
def test_rope_frequencies_round_through_the_policys_dtype():
    """The record's .bfloat16() rounds its rotary inv_freq; positions and angles stay fp32."""
    base, dims, seq = 10000.0, 8, 300
    inv = 1.0 / base ** (torch.arange(0, dims, 2, dtype=torch.float32) / dims)
    angles = torch.outer(torch.arange(seq, dtype=torch.float32), inv.bfloat16().float())
    cos, sin = rope_cos_sin(seq, dims, base, "cpu", torch.bfloat16)
    assert cos.dtype == torch.float32
    assert torch.equal(cos[0, :, 0], angles.cos()) and torch.equal(sin[0, :, 0], angles.sin())
    assert not torch.equal(rope_cos_sin(seq, dims, base, "cpu")[0], cos)
    model = GPT(load_preset("tiny").model)
    assert model.rope_freq_dtype == torch.float32
    torch.nn.init.normal_(model.qo_bank.data, std=0.1)  # out-projections start at zero: attention would be silent
    x = torch.randint(2, 512, (1, 64))
    fp32 = model(x)
    model.rope_freq_dtype = torch.bfloat16
    assert not torch.equal(model(x), fp32)


def test_bf16_embedding_runs_without_autocast_in_bf16():
    """The record's dtype rule without autocast (its calibration): the smear gate and every norm keep
    the bf16 residual; CPU fp32 is untouched by the casts."""
    cfg = load_preset("tiny")
    model = GPT(cfg.model)
    with torch.no_grad():
        model.smear_gate.weight.normal_()
        model.smear_lambda.fill_(0.5)
    x = torch.randint(2, 512, (2, 16))
    fp32 = model(x)
    model.tok_emb.weight.data = model.tok_emb.weight.data.bfloat16()
    seen = []
    with model.observe(lambda name, t: seen.append(t.dtype)):
        logits = model(x)
    assert set(seen) == {torch.bfloat16} and logits.dtype == torch.float32
    assert (logits - fp32).abs().max() < 0.1


def test_partial_rope_golden_and_relative():
    rope_dims, base = 4, 10000.0
    cos, sin = rope_cos_sin(3, rope_dims, base, "cpu", torch.float32)
    x = torch.tensor([1.0, 0.0, 0.0, 0.0, 5.0]).expand(1, 3, 1, 5)
    out = apply_partial_rope(x, cos, sin, rope_dims)
    theta0 = 2.0  # position 2, frequency 1
    torch.testing.assert_close(out[0, 2, 0], torch.tensor([math.cos(theta0), 0.0, -math.sin(theta0), 0.0, 5.0]))
    theta1 = 2.0 / base ** 0.5  # second pair (channels 1 and 3) turns slower
    y = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0]).expand(1, 3, 1, 5)
    torch.testing.assert_close(apply_partial_rope(y, cos, sin, rope_dims)[0, 2, 0],
                               torch.tensor([0.0, math.cos(theta1), 0.0, -math.sin(theta1), 0.0]))
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8, generator=g), torch.randn(1, 1, 1, 8, generator=g)
    cos, sin = rope_cos_sin(12, 4, base, "cpu", torch.float32)
    rq = apply_partial_rope(q.expand(1, 12, 1, 8), cos, sin, 4)[0, :, 0]
    rk = apply_partial_rope(k.expand(1, 12, 1, 8), cos, sin, 4)[0, :, 0]
    torch.testing.assert_close(rq[7] @ rk[3], rq[10] @ rk[6])  # depends on the offset only


def test_xsa_removes_own_value_component(tiny_cfg):
    attn = CausalSelfAttention(tiny_cfg.model, layer_idx=3)
    y, v = torch.randn(2, 5, 4, 16), torch.randn(2, 5, 2, 16)
    out = attn._remove_self_value(y, v).reshape(2, 5, 2, 2, 16)
    v_hat = torch.nn.functional.normalize(v, dim=-1)[:, :, :, None]
    assert (out * v_hat).sum(-1).abs().max() < 1e-5


def test_init_values():
    cfg = load_preset("tiny", {"model.asym_logit_rescale": True}).model
    m = GPT(cfg)
    L = cfg.num_layers
    for i in range(L):
        w_q, w_k, w_v, w_o, w_up, w_down = m.bank_weights(i)
        for w in (w_q, w_k, w_v, w_up):  # orthogonal: rows (or columns) orthonormal
            gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
            torch.testing.assert_close(gram, torch.eye(gram.shape[0]), atol=1e-5, rtol=0)
        assert torch.count_nonzero(w_o) == 0 and torch.count_nonzero(w_down) == 0
        b = m.blocks[i]
        assert torch.equal(b.attn.q_gain, torch.full((cfg.num_heads,), cfg.qk_gain_init))
        assert torch.count_nonzero(b.attn.attn_gate_w) == 0
        assert torch.equal(b.resid_mix[0], torch.ones(cfg.model_dim)) and torch.count_nonzero(b.resid_mix[1]) == 0
        assert torch.equal(b.attn_scale, torch.ones(cfg.model_dim)) and torch.equal(b.mlp_scale, b.attn_scale)
        assert b.ln_scale_factor == pytest.approx(1 / math.sqrt(i + 1))
    assert abs(m.tok_emb.weight.std().item() - cfg.tied_embed_init_std) < 5e-4
    assert torch.equal(m.skip_weights, torch.ones_like(m.skip_weights))
    assert torch.count_nonzero(m.skip_gates) == 0
    assert torch.equal(m.parallel_resid_lambdas, torch.full((L, 2), 1.1))
    assert torch.equal(m.parallel_post_lambdas, torch.ones(L, 2, 2))
    assert torch.count_nonzero(m.smear_gate.weight) == 0 and m.smear_lambda.item() == 0
    assert m.softcap_pos.item() == m.softcap_neg.item() == 30.0
    assert load_preset("seed").model.qk_gain_init == 5.25


def test_blocks_are_identity_at_init(tiny_cfg):
    """Zero out-projections make every block a no-op at init: logits = softcap(norm(emb) E^T)."""
    m = GPT(tiny_cfg.model)
    m.set_looping(True)
    ids = tokens(10, tiny_cfg.model.vocab_size)[None]
    norm = lambda t: torch.nn.functional.rms_norm(t, (t.shape[-1],))  # noqa: E731
    h = norm(norm(m.tok_emb(ids)))  # the embedding norm, then the final norm (lane scales cancel in it)
    expected = 30.0 * torch.tanh(h @ m.tok_emb.weight.T / 30.0)
    torch.testing.assert_close(m(ids), expected, atol=1e-5, rtol=1e-5)


# Logits and losses of the record's own `GPT` (2026-04-27 1.0611 record's train_gpt.py, run once on CPU
# with SDPA standing in for FA3, fused kernels off) after loading `randomized(GPT(tiny))`'s state dict.
# pgolf matched it bit for bit; these values pin that agreement.
RECORD_GOLDEN_LOGITS = [  # positions 0, 16, 17, 29, 47 x token ids 0, 1, 100, 511 (looping on, packed)
    [-0.53982, 1.8121, -0.54185, -0.88203],
    [-0.88957, 1.15023, 2.65873, -1.37772],
    [-0.53982, 1.8121, -0.54185, -0.88203],
    [-0.95977, -0.32755, 1.43802, -0.64464],
    [0.47416, -0.68182, 0.69114, 1.11069],
]
RECORD_GOLDEN_LOSS = {True: 6.465690612792969, False: 6.515346527099609}  # dense, by looping state


def test_matches_record_golden_values(tiny_cfg):
    m = randomized(GPT(tiny_cfg.model))
    ids = tokens(48, tiny_cfg.model.vocab_size, bos_at=(0, 17, 30))[None]
    cu = torch.tensor([0, 17, 30, 48], dtype=torch.int32)
    m.set_looping(True)
    with torch.no_grad():
        logits = m(ids, cu_seqlens=cu, max_seqlen=18)
        got = logits[0, [0, 16, 17, 29, 47]][:, [0, 1, 100, 511]]
        torch.testing.assert_close(got, torch.tensor(RECORD_GOLDEN_LOGITS), atol=2e-5, rtol=0)
        for looping, loss in RECORD_GOLDEN_LOSS.items():
            m.set_looping(looping)
            assert m(ids[:, :-1], ids[:, 1:]).item() == pytest.approx(loss, abs=2e-5)


@pytest.mark.gpu
def test_cuda_bf16_autocast_tracks_cpu_fp32(tiny_cfg):
    """The training dtype path (CUDA, bf16 autocast, FA3 when installed) stays close to the fp32 reference."""
    import copy

    m = randomized(GPT(tiny_cfg.model))
    m.set_looping(True)
    ids = tokens(48, tiny_cfg.model.vocab_size, bos_at=(0, 17, 30))[None]
    cu = torch.tensor([0, 17, 30, 48], dtype=torch.int32)
    ref = m(ids, cu_seqlens=cu, max_seqlen=18)
    gpu = copy.deepcopy(m).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = gpu(ids.cuda(), cu_seqlens=cu.cuda(), max_seqlen=18)
        loss = gpu(ids[:, :-1].cuda(), ids[:, 1:].cuda())
    assert out.dtype == torch.float32
    assert (out.cpu() - ref).abs().mean() < 0.03
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in gpu.parameters())
