"""BatchedLoRA: B=0 is the identity, rows are independent, routing, reset, snapshots, the seed's sizes."""

from __future__ import annotations

import math

import pytest
import torch

from pgolf.config import ModelConfig, TTTConfig
from pgolf.model import GPT
from pgolf.ttt.lora import BatchedLoRA, FrozenLoRA, site_dims


def _lora(tiny_cfg, bsz=3, **ttt):
    t = tiny_cfg.ttt if not ttt else tiny_cfg.replace({f"ttt.{k}": v for k, v in ttt.items()}).ttt
    return BatchedLoRA(tiny_cfg.model, t, bsz, num_slots=2, generator=torch.Generator().manual_seed(0))


def _randomize_b(lora, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b in lora.b.values():
            b.copy_(torch.randn(b.shape, generator=g) * 0.1)


def test_fresh_adapters_leave_logits_unchanged(tiny_cfg):
    model = GPT(tiny_cfg.model).eval()
    model.set_looping(True)
    lora = BatchedLoRA(tiny_cfg.model, tiny_cfg.ttt, 2, model.num_slots)
    x = torch.randint(2, tiny_cfg.model.vocab_size, (2, 12))
    with torch.no_grad():
        assert torch.equal(model(x), model(x, adapters=lora))
        _randomize_b(lora)
        assert not torch.allclose(model(x), model(x, adapters=lora))


def test_delta_matches_the_formula_per_row(tiny_cfg):
    lora = _lora(tiny_cfg)
    _randomize_b(lora)
    x = torch.randn(3, 5, tiny_cfg.model.model_dim)
    out = lora.delta("k", 1, x)
    assert out.shape == (3, 5, tiny_cfg.model.kv_dim)
    scale = tiny_cfg.ttt.lora_alpha / tiny_cfg.ttt.lora_rank
    for b in range(3):
        ref = x[b] @ lora.a["k_1"][b].T @ lora.b["k_1"][b].T * scale
        torch.testing.assert_close(out[b], ref)


def test_rows_are_independent(tiny_cfg):
    lora = _lora(tiny_cfg)
    _randomize_b(lora)
    x = torch.randn(3, 4, tiny_cfg.model.model_dim)
    before = lora.delta("mlp", 0, x)
    with torch.no_grad():
        lora.b["mlp_0"][1] += 1.0
    after = lora.delta("mlp", 0, x)
    assert torch.equal(before[0], after[0]) and torch.equal(before[2], after[2])
    assert not torch.allclose(before[1], after[1])


def test_peer_index_routes_rows_and_subsets(tiny_cfg):
    lora = _lora(tiny_cfg)
    _randomize_b(lora)
    x = torch.randn(3, 4, tiny_cfg.model.model_dim)
    own = lora.delta("head", 0, x)
    lora.peer_index = torch.tensor([2, 0, 1])
    routed = lora.delta("head", 0, x)
    for i, src in enumerate([2, 0, 1]):
        lora.peer_index = torch.tensor([src])
        torch.testing.assert_close(routed[i], lora.delta("head", 0, x[i:i + 1])[0])
    lora.peer_index = torch.tensor([1, 2])  # a subset: activation rows 0, 1 use adapters 1, 2
    torch.testing.assert_close(lora.delta("head", 0, x[1:]), own[1:])
    other = _lora(tiny_cfg)  # routing is per instance, not a class-level switch
    assert other.peer_index is None


def test_sites_follow_the_mask(tiny_cfg):
    x = torch.randn(3, 2, tiny_cfg.model.model_dim)
    no_qv = _lora(tiny_cfg, mask="no_qv")
    assert no_qv.delta("q", 0, x) is None and no_qv.delta("v", 1, x) is None
    assert no_qv.delta("k", 0, x) is not None and no_qv.delta("o", 1, x) is not None
    full = _lora(tiny_cfg, mask="all")
    assert full.delta("q", 0, x).shape[-1] == tiny_cfg.model.model_dim
    assert full.delta("v", 1, x).shape[-1] == tiny_cfg.model.kv_dim


def test_seed_sizes_per_document():
    """#2139: rank 80, no_qv, 17 slots, d 512, kv 256, V 8192 -> 4,526,080 adapter params per doc."""
    lora = BatchedLoRA(ModelConfig(), TTTConfig(), bsz=1, num_slots=17)
    assert lora.num_params_per_doc() == 4_526_080
    assert lora.scale == pytest.approx(1.8)
    record = BatchedLoRA(ModelConfig(), TTTConfig(mask="all"), bsz=1, num_slots=17)
    assert record.num_params_per_doc() == 6_963_200  # R27, Q and V on


def test_init_bounds_and_zero_b(tiny_cfg):
    lora = _lora(tiny_cfg, mask="all")
    for key, a in lora.a.items():
        site = key.split("_")[0]
        bound = 1 / math.sqrt(site_dims(tiny_cfg.model, site)[0])
        peak = float(a.detach().abs().max())
        assert 0.5 * bound < peak <= bound
        assert not torch.equal(a[0], a[1])
    assert all(float(b.detach().abs().sum()) == 0 for b in lora.b.values())


@pytest.mark.parametrize("warm", [True, False])
def test_reset_zeroes_b_and_keeps_a_under_warm_start(tiny_cfg, warm):
    lora = _lora(tiny_cfg, warm_start_a=warm)
    _randomize_b(lora)
    a_before = {k: v.detach().clone() for k, v in lora.a.items()}
    lora.peer_index = torch.tensor([0, 0, 0])
    lora.reset()
    assert lora.peer_index is None
    assert all(float(b.detach().abs().sum()) == 0 for b in lora.b.values())
    same = all(torch.equal(a_before[k], v) for k, v in lora.a.items())
    assert same == warm


def test_snapshot_is_frozen_and_equivalent(tiny_cfg):
    lora = _lora(tiny_cfg)
    _randomize_b(lora)
    x = torch.randn(3, 4, tiny_cfg.model.model_dim)
    snap = lora.snapshot()
    torch.testing.assert_close(snap.delta("o", 1, x), lora.delta("o", 1, x))
    expected = lora.delta("o", 1, x).detach()
    lora.reset()
    with torch.no_grad():
        lora.a["o_1"].add_(1.0)
    torch.testing.assert_close(snap.delta("o", 1, x), expected)
    assert snap.delta("q", 0, x) is None
    pool = FrozenLoRA.concat([snap, lora.snapshot(torch.tensor([1]))])
    assert pool.num_docs == 4
    pool.peer_index = torch.tensor([0, 1, 2])
    torch.testing.assert_close(pool.delta("o", 1, x), expected)


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("autocast", [False, True])
def test_delta_dtype_is_the_projection_dtype(tiny_cfg, x_dtype, autocast):
    """`out + delta` must not promote: the delta takes the dtype of F.linear(x, W.to(x.dtype))."""
    lora = _lora(tiny_cfg)
    _randomize_b(lora)
    frozen = lora.snapshot()
    frozen.peer_index = torch.tensor([2, 0])
    x = torch.randn(3, 5, tiny_cfg.model.model_dim).to(x_dtype)
    w = torch.randn(tiny_cfg.model.kv_dim, tiny_cfg.model.model_dim)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        base = torch.nn.functional.linear(x, w.to(x.dtype))
        delta = lora.delta("k", 0, x)
        peer = frozen.delta("k", 0, x[:2])
    assert delta.dtype == base.dtype == peer.dtype
    assert (base + delta).dtype == base.dtype
    # Same numbers as the formula in the projection's dtype (bf16 paths to bf16 rounding).
    scale = tiny_cfg.ttt.lora_alpha / tiny_cfg.ttt.lora_rank
    ref = torch.stack([x[b].float() @ lora.a["k_0"][b].T @ lora.b["k_0"][b].T * scale for b in range(3)])
    tol = 1e-5 if base.dtype == torch.float32 else 5e-2
    torch.testing.assert_close(delta.float(), ref.detach(), atol=tol, rtol=tol)
