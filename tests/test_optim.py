"""Muon / Polar Express numerics, the parameter table, the optimizer bundle, and 2-rank gloo parity."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import pgolf.optim as optim_mod
from pgolf.config import TrainConfig, load_preset
from pgolf.errors import ConfigError
from pgolf.model import GPT
from pgolf.optim import (PARAM_TABLE, PE_COEFFS, Comm, Muon, ParamRule, assign_params, build_optimizers, row_normalize,
                         shape_scale, zeropower_polar_express)

# The five (a, b, c) tuples of Polar Express, typed here independently of pgolf.optim (rounded as in the spec).
SPEC_COEFFS = ((8.1566, -22.4833, 15.8788), (4.0429, -2.8089, 0.5000), (3.8917, -2.7725, 0.5061),
               (3.2858, -2.3681, 0.4645), (2.3465, -1.7098, 0.4232))
# Composed PE polynomial on [1e-3, 1] maps into this band (the Polar Express design target, measured).
PE_BAND = (0.85, 1.15)


def small_gpt(**model_overrides) -> tuple[GPT, TrainConfig]:
    """tiny preset with 3 layers so the banks have odd leading sizes (3, 6): exercises shard padding."""
    over = {"model.num_layers": 3, "model.xsa_last_n": 3}
    over.update({f"model.{k}": v for k, v in model_overrides.items()})
    cfg = load_preset("tiny", over)
    torch.manual_seed(0)
    return GPT(cfg.model), cfg.train


def random_grads(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(p.shape, generator=gen) for n, p in model.named_parameters()}


def set_grads(model: nn.Module, grads: dict[str, torch.Tensor]) -> None:
    for n, p in model.named_parameters():
        p.grad = grads[n].clone()


# --------------------------------------------------------------------------- Polar Express
def test_coefficients_are_the_specified_ones():
    assert len(PE_COEFFS) == 5
    for got, want in zip(PE_COEFFS, SPEC_COEFFS):
        assert got == pytest.approx(want, abs=5e-5)


def test_pe_polynomial_band():
    """The composed scalar map sends every normalized singular value in [1e-3, 1] into PE_BAND."""
    x = torch.logspace(-3, 0, 4001, dtype=torch.float64)
    y = x.clone()
    for a, b, c in SPEC_COEFFS:
        y = a * y + b * y**3 + c * y**5
    assert PE_BAND[0] < y.min().item() and y.max().item() < PE_BAND[1]


@pytest.mark.parametrize("shape", [(3, 16, 32), (2, 48, 16), (24, 40)])
def test_polar_express_singular_values_near_one(shape):
    G = torch.randn(*shape)
    X = zeropower_polar_express(G)
    assert X.shape == G.shape and X.dtype == torch.float32
    s = torch.linalg.svdvals(X.double())
    assert PE_BAND[0] < s.min().item() and s.max().item() < PE_BAND[1]


@pytest.mark.parametrize("shape", [(2, 12, 20), (2, 20, 12)])
def test_polar_express_matches_float64_spectral_reference(shape):
    """PE(G) = U·f(Σ/‖G‖_F)·Vᵀ with f the scalar 5-step polynomial: checked through an SVD in float64."""
    G = torch.randn(*shape, dtype=torch.float64)
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    x = S / (torch.linalg.matrix_norm(G)[:, None] + 1e-7)
    for a, b, c in PE_COEFFS:
        x = a * x + b * x**3 + c * x**5
    want = U @ torch.diag_embed(x) @ Vh
    got32 = zeropower_polar_express(G.float())
    got64 = zeropower_polar_express(G, dtype=torch.float64)
    assert (got64 - want).abs().max().item() < 1e-10
    assert (got32.double() - want).abs().max().item() < 1e-4


def test_polar_express_invariances():
    """Scale invariance, transpose symmetry and orthogonal equivariance of the polar factor."""
    G = torch.randn(2, 10, 14, dtype=torch.float64)
    X = zeropower_polar_express(G, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(10, 10, dtype=torch.float64))
    assert torch.allclose(zeropower_polar_express(7.5 * G, dtype=torch.float64), X, atol=1e-9)
    assert torch.allclose(zeropower_polar_express(G.mT, dtype=torch.float64), X.mT, atol=1e-12)
    assert torch.allclose(zeropower_polar_express(Q @ G, dtype=torch.float64), Q @ X, atol=1e-9)


def test_polar_express_step_count_and_zero_input():
    G = torch.randn(8, 8)
    one = zeropower_polar_express(G, steps=1)
    a, b, c = PE_COEFFS[0]
    X = G / (G.norm() + 1e-7)
    A = X @ X.T
    assert torch.allclose(one, a * X + (b * A + c * A @ A) @ X, atol=1e-5)
    assert torch.equal(zeropower_polar_express(torch.zeros(2, 4, 6)), torch.zeros(2, 4, 6))
    with pytest.raises(AssertionError):
        zeropower_polar_express(G, steps=6)


def test_row_normalize_rows_unit_and_zero_rows_stay_zero():
    u = torch.randn(3, 5, 7) * torch.rand(3, 5, 1) * 10
    u[1, 2] = 0
    r = row_normalize(u)
    norms = r.norm(dim=-1)
    assert torch.allclose(norms[norms > 0], torch.ones_like(norms[norms > 0]), atol=1e-6)
    assert torch.equal(r[1, 2], torch.zeros(7))
    assert ((norms > 0).sum().item()) == 3 * 5 - 1
    assert torch.allclose(r, u / u.norm(dim=-1, keepdim=True).clamp_min(1e-7))


# --------------------------------------------------------------------------- Muon step
def _muon_ref_update(g, buf, mu):
    """One Nesterov + MuonEq-R + PE update, written out long-hand."""
    buf = mu * buf + g
    u = g + mu * buf
    u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-7)
    return zeropower_polar_express(u), buf


def test_muon_two_steps_match_long_hand():
    torch.manual_seed(1)
    p0 = torch.randn(3, 8, 4)  # tall: rows/cols = 2 -> scale sqrt(2)
    p = nn.Parameter(p0.clone())
    lr, wd, mu = 0.05, 0.1, 0.9
    opt = Muon([p], lr=lr, momentum=mu, weight_decay=wd)
    want, buf = p0.clone(), torch.zeros_like(p0)
    for _ in range(2):
        g = torch.randn_like(p0)
        p.grad = g.clone()
        opt.step()
        u, buf = _muon_ref_update(g, buf, mu)
        want = want * (1 - lr * wd) - lr * math.sqrt(2.0) * u
    assert torch.allclose(p.detach(), want, atol=1e-6)
    assert torch.allclose(opt.state[p]["momentum_buffer"], buf, atol=1e-6)


def test_muon_weight_decay_is_decoupled():
    """A zero gradient gives a zero orthogonalized update, so only p *= 1 - lr*wd remains (exactly)."""
    p = nn.Parameter(torch.randn(2, 4, 4))
    before = p.detach().clone()
    opt = Muon([p], lr=0.1, momentum=0.95, weight_decay=0.5)
    p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(p.detach(), before * (1 - 0.1 * 0.5))


@pytest.mark.parametrize("rows,cols,scale", [(16, 4, 2.0), (4, 16, 1.0), (8, 8, 1.0), (12, 4, math.sqrt(3))])
def test_muon_shape_scale(rows, cols, scale):
    assert shape_scale(rows, cols) == pytest.approx(scale)
    p = nn.Parameter(torch.zeros(1, rows, cols))
    g = torch.randn(1, rows, cols)
    p.grad = g.clone()
    Muon([p], lr=1.0, momentum=0.0, weight_decay=0.0).step()
    want = -scale * zeropower_polar_express(row_normalize(g))
    assert torch.allclose(p.detach(), want, atol=1e-6)


def test_muon_row_normalize_off_changes_update():
    g = torch.randn(1, 6, 6) * torch.linspace(0.1, 10, 6)[:, None]
    outs = []
    for rn in (True, False):
        p = nn.Parameter(torch.zeros(1, 6, 6))
        p.grad = g.clone()
        Muon([p], lr=1.0, momentum=0.0, row_normalize=rn).step()
        outs.append(p.detach().clone())
    assert torch.allclose(outs[1], -zeropower_polar_express(g), atol=1e-6)
    assert not torch.allclose(outs[0], outs[1], atol=1e-3)


def test_muon_bf16_work_dtype_path():
    """The CUDA numerics (bf16 grads, momentum, PE) exercised on CPU: close to fp32, buffers stay bf16."""
    g1, g2 = torch.randn(2, 3, 16, 32).unbind(0)
    p0 = torch.randn(3, 16, 32)
    out = {}
    for dt in (torch.float32, torch.bfloat16):
        p = nn.Parameter(p0.clone())
        opt = Muon([p], lr=0.1, momentum=0.9, weight_decay=0.1, work_dtype=dt)
        for g in (g1, g2):
            p.grad = g.clone()
            opt.step()
        assert opt.state[p]["momentum_buffer"].dtype == dt and p.dtype == torch.float32
        out[dt] = (p.detach().clone(), opt)
    step32 = out[torch.float32][0] - p0
    step16 = out[torch.bfloat16][0] - p0
    # bf16 Polar Express itself lands ~6% (relative Frobenius) from fp32 on Gaussian input: 5 steps with
    # coefficients up to 22 amplify bf16 rounding. The record runs exactly this; 0.1 still catches a wrong path.
    assert (step16 - step32).norm() / step32.norm() < 0.1
    opt16 = out[torch.bfloat16][1]
    p = opt16.param_groups[0]["params"][0]
    buf = opt16.state[p]["momentum_buffer"].clone()
    opt16.load_state_dict(opt16.state_dict())
    assert opt16.state[p]["momentum_buffer"].dtype == torch.bfloat16
    assert torch.equal(opt16.state[p]["momentum_buffer"], buf)


def test_comm_at_world_size_one_is_local():
    comm = Comm()
    assert not comm.enabled and comm.world_size == 1 and comm.rank == 0
    full, shard = torch.randn(3, 2), torch.empty(3, 2)
    comm.reduce_scatter_avg(shard, full).wait()
    assert torch.equal(shard, full)
    t = torch.randn(4)
    before = t.clone()
    comm.all_reduce_avg(t).wait()
    assert torch.equal(t, before)


@pytest.mark.parametrize("emulate", [False, True])
def test_optimizer_numerics_follow_the_device_policy(emulate):
    """The record's policy (emulated here) gives the record's optimizer numerics (bf16 Muon, fused AdamW,
    Polar Express compiled unless compile=off); the CPU policy the fp32 foreach reference, eager even
    with compile=on."""
    from pgolf import device, emulation

    policy = emulation.emulated_cuda_policy() if emulate else device.cpu_policy()
    model, train = small_gpt()
    with policy.activate():
        policy.cast_model(model)
        opts = build_optimizers(model, dataclasses.replace(train, compile="on"))
        off = build_optimizers(model, dataclasses.replace(train, compile="off"))
        model(torch.randint(2, 512, (1, 16)), torch.randint(2, 512, (1, 16))).float().backward()
        off.step()
    want = torch.bfloat16 if emulate else torch.float32
    assert off.muon.state[model.qo_bank]["momentum_buffer"].dtype == want
    assert opts.adam_embed.param_groups[0]["fused"] is (True if emulate else None)
    assert (opts.muon.orthogonalize is not zeropower_polar_express) is emulate
    assert off.muon.orthogonalize is zeropower_polar_express
    assert off.adam_embed.state[model.tok_emb.weight]["exp_avg"].dtype == (torch.bfloat16 if emulate else torch.float32)


@pytest.mark.gpu
def test_cuda_compiled_polar_express_and_fused_adam():
    G = torch.randn(4, 64, 256, device="cuda")
    eager = zeropower_polar_express(G)
    assert eager.dtype == torch.bfloat16
    compiled = torch.compile(zeropower_polar_express, dynamic=False)(G)
    assert (compiled.float() - eager.float()).abs().max().item() < 2e-2
    s = torch.linalg.svdvals(eager.double())
    assert 0.75 < s.min().item() and s.max().item() < 1.25
    model, train = small_gpt()
    model = model.cuda()
    opts = build_optimizers(model, train)
    assert opts.adam_embed.param_groups[0]["fused"] and opts.muon.orthogonalize is not zeropower_polar_express
    x = torch.randint(2, 512, (2, 33), device="cuda")
    for _ in range(3):
        model(x[:, :-1], x[:, 1:]).backward()
        opts.step()
        opts.zero_grad()
    assert opts.muon.state[model.qo_bank]["momentum_buffer"].dtype == torch.bfloat16
    assert all(torch.isfinite(p).all() for p in model.parameters())


# --------------------------------------------------------------------------- parameter table
def _table_counts(model):
    a = assign_params(model.named_parameters())
    return {o: sorted(n for n, r in a.items() if r.optimizer == o) for o in ("muon", "adam_embed", "adam_scalar", "frozen")}


@pytest.mark.parametrize("preset,num_frozen", [("record", 2), ("seed", 0), ("tiny", 0), ("baseline", 0)])
def test_every_parameter_matches_exactly_one_row_on_meta(preset, num_frozen):
    cfg = load_preset(preset)
    with torch.device("meta"):
        model = GPT(cfg.model)
    names = [n for n, _ in model.named_parameters()]
    for n in names:
        assert sum(r.matches(n) for r in PARAM_TABLE) == 1, n
    c = _table_counts(model)
    assert c["muon"] == ["kv_bank", "mlp_down_bank", "mlp_up_bank", "qo_bank"]
    assert c["adam_embed"] == ["tok_emb.weight"]
    assert len(c["frozen"]) == num_frozen
    assert sum(len(v) for v in c.values()) == len(names)
    # every ndim<2 tensor is in the scalar AdamW or frozen (the record's rule), never in Muon/embedding
    for n, p in model.named_parameters():
        if p.ndim < 2:
            assert n in c["adam_scalar"] or n in c["frozen"]
    if preset == "record":
        assert c["frozen"] == ["softcap_neg", "softcap_pos"]
        L = cfg.model.num_layers
        assert len(c["adam_scalar"]) == 5 * L + 6  # per block 5 tensors + skips, lanes, smear


def test_unmatched_and_doubly_matched_names_are_reported():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.qo_bank = nn.Parameter(torch.zeros(2, 4, 4))
            self.mystery = nn.Parameter(torch.zeros(3))
            self.other_thing = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match=r"no row for mystery, other_thing"):
        build_optimizers(Odd(), TrainConfig())
    table = PARAM_TABLE + (ParamRule(r"qo_.*", "muon", "matrix_lr", "muon_wd", None),)
    with pytest.raises(ValueError, match=r"several rows for qo_bank"):
        assign_params([("qo_bank", None)], table)


def test_bad_backend_steps_is_a_config_error():
    model, train = small_gpt()
    cfg = TrainConfig(muon_backend_steps=7)
    with pytest.raises(ConfigError, match="train.muon_backend_steps"):
        build_optimizers(model, cfg)


def test_groups_carry_the_config_values():
    model, train = small_gpt()
    opts = build_optimizers(model, train)
    emb, = opts.adam_embed.param_groups
    assert [id(p) for p in emb["params"]] == [id(model.tok_emb.weight)]
    assert (emb["lr"], emb["weight_decay"], emb["betas"], emb["eps"]) == (0.03, 0.085, (0.9, 0.99), 1e-8)
    sc, = opts.adam_scalar.param_groups
    assert (sc["lr"], sc["weight_decay"], sc["betas"]) == (0.02, 0.02, (0.9, 0.99))
    mu, = opts.muon.param_groups
    assert (mu["lr"], mu["weight_decay"], mu["momentum"], mu["backend_steps"], mu["row_normalize"]) == \
        (0.026, 0.095, 0.97, 5, True)
    held = {id(p) for o in opts.optimizers.values() for g in o.param_groups for p in g["params"]}
    assert held == {id(p) for p in model.parameters()}
    rows = opts.table()
    assert len(rows) == len(list(model.parameters()))
    assert {r["name"]: (r["optimizer"], r["lr"], r["wd"]) for r in rows}["mlp_up_bank"] == ("muon", 0.026, 0.095)

    opts.set_lr_scale(0.25)
    assert [g["lr"] for o in opts.optimizers.values() for g in o.param_groups] == \
        pytest.approx([0.03 * 0.25, 0.026 * 0.25, 0.02 * 0.25])
    opts.set_muon_momentum(0.93)
    assert mu["momentum"] == 0.93


def test_frozen_softcaps_never_change():
    model, train = small_gpt(asym_logit_rescale=True)
    opts = build_optimizers(model, train)
    assert sorted(opts.names["frozen"]) == ["softcap_neg", "softcap_pos"]
    set_grads(model, random_grads(model, 3))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opts.step()
    after = dict(model.named_parameters())
    assert torch.equal(after["softcap_pos"], before["softcap_pos"])
    assert torch.equal(after["softcap_neg"], before["softcap_neg"])
    assert not torch.equal(after["qo_bank"], before["qo_bank"])
    assert not torch.equal(after["tok_emb.weight"], before["tok_emb.weight"])


def test_training_steps_lower_the_loss():
    model, train = small_gpt()
    opts = build_optimizers(model, train)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(2, 512, (2, 32), generator=gen)
    losses = []
    for _ in range(6):
        loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opts.step()
        opts.zero_grad()
        losses.append(loss.item())
    assert all(p.grad is None for p in model.parameters())
    assert losses[-1] < losses[0] - 0.5, losses


def test_state_dict_roundtrip_weights_only(tmp_path):
    """Resume: A steps 2, saves; B loads model+optimizer state; both step 2 more identically."""
    model_a, train = small_gpt()
    opts_a = build_optimizers(model_a, train)
    for k in range(2):
        set_grads(model_a, random_grads(model_a, k))
        opts_a.set_lr_scale(0.5 + k)
        opts_a.set_muon_momentum(0.9 + 0.01 * k)
        opts_a.step()
    torch.save({"model": model_a.state_dict(), "opt": opts_a.state_dict()}, tmp_path / "ck.pt")
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    model_b, _ = small_gpt()
    model_b.load_state_dict(ck["model"])
    opts_b = build_optimizers(model_b, train)
    opts_b.load_state_dict(ck["opt"])
    assert opts_b.lr_scale == 1.5 and opts_b.muon_momentum == pytest.approx(0.91)
    assert opts_b.muon.param_groups[0]["lr"] == pytest.approx(0.026 * 1.5)
    for k in range(2, 4):
        for m, o in ((model_a, opts_a), (model_b, opts_b)):
            set_grads(m, random_grads(m, k))
            o.step()
    for (n, pa), (_, pb) in zip(model_a.named_parameters(), model_b.named_parameters()):
        assert torch.equal(pa, pb), n


def test_load_state_dict_refuses_other_layout():
    model, train = small_gpt()
    opts = build_optimizers(model, train)
    sd = opts.state_dict()
    del sd["optimizers"]["adam_scalar"]
    with pytest.raises(ValueError, match="adam_scalar"):
        opts.load_state_dict(sd)


# --------------------------------------------------------------------------- 2 ranks on gloo
NUM_STEPS = 2
# Parity tolerance vs. one process stepping the averaged gradient: SUM/2 of two fp32 values is exact, so
# only the per-shard vs. whole-bank batched matmuls may round differently.
DIST_ATOL = 1e-6


def _dist_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        init = torch.load(f"{out_dir}/init.pt", weights_only=True)
        for impl in ("auto", "all_reduce"):
            # the second run also sends the embedding (32,768 numel) through the unpacked all-reduce path
            optim_mod.PACKED_GRAD_MAX_NUMEL = 1 << 15 if impl == "auto" else 1024
            model, train = small_gpt()
            model.load_state_dict(init)
            opts = build_optimizers(model, train)
            opts.muon.comm.reduce_scatter_impl = impl
            for k in range(NUM_STEPS):
                set_grads(model, random_grads(model, 100 * k + rank))
                opts.set_lr_scale(1.0 - 0.3 * k)
                opts.step()
                opts.zero_grad()
            shard_shapes = {n: tuple(opts.muon.state[p]["momentum_buffer"].shape)
                            for n, p in model.named_parameters() if p in opts.muon.state}
            sd = opts.state_dict()  # collective: gathers the Muon shards
            shards = {id(p): opts.muon.state[p]["momentum_buffer"].clone() for p in opts.muon.state}
            opts.load_state_dict(sd)  # and back: each rank re-slices (and re-pads) its own shard
            for p in opts.muon.state:
                assert torch.equal(opts.muon.state[p]["momentum_buffer"], shards[id(p)])
            torch.save({"params": dict(model.named_parameters()), "opt": sd, "shards": shard_shapes,
                        "impl": opts.muon.comm.reduce_scatter_impl}, f"{out_dir}/{impl}_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_one_process_on_averaged_grads(tmp_path):
    model, train = small_gpt()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(init, tmp_path / "init.pt")
    mp.spawn(_dist_worker, args=(2, str(tmp_path / "rdzv"), str(tmp_path)), nprocs=2, join=True)

    opts = build_optimizers(model, train)
    for k in range(NUM_STEPS):
        g0, g1 = random_grads(model, 100 * k), random_grads(model, 100 * k + 1)
        set_grads(model, {n: (g0[n] + g1[n]) / 2 for n in g0})
        opts.set_lr_scale(1.0 - 0.3 * k)
        opts.step()
    want_params = dict(model.named_parameters())
    want_opt = opts.state_dict()["optimizers"]

    for impl, ran in (("auto", "native"), ("all_reduce", "all_reduce")):
        r0 = torch.load(tmp_path / f"{impl}_rank0.pt", weights_only=True)
        r1 = torch.load(tmp_path / f"{impl}_rank1.pt", weights_only=True)
        assert r0["impl"] == ran
        # the 3-slice banks are padded to 4 and split 2 + 2; the 6-slice banks split 3 + 3
        assert r0["shards"] == {"qo_bank": (3, 64, 64), "kv_bank": (3, 32, 64),
                                "mlp_up_bank": (2, 128, 64), "mlp_down_bank": (2, 64, 128)}
        for n, want in want_params.items():
            assert torch.equal(r0["params"][n], r1["params"][n]), f"{impl}: ranks disagree on {n}"
            err = (r0["params"][n] - want.detach()).abs().max().item()
            assert err <= DIST_ATOL, f"{impl}: {n} differs from the single-process step by {err}"
        for name in ("muon", "adam_embed", "adam_scalar"):
            for idx, st in want_opt[name]["state"].items():
                for key, t in st.items():
                    got = r0["opt"]["optimizers"][name]["state"][idx][key]
                    assert got.shape == t.shape, (name, idx, key)
                    assert torch.allclose(got, t, atol=DIST_ATOL), (impl, name, idx, key)
