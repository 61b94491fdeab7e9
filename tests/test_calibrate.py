"""Hessian / activation-RMS collection through the model's observer."""

from __future__ import annotations

import contextlib
from collections import Counter, defaultdict

import pytest
import torch

from pgolf.errors import DataError
from pgolf.model import GPT, looped_order
from pgolf.quant.calibrate import (HessianAccumulator, collect_hessians, load_calibration,
                                   save_calibration)


def expected_names(num_layers: int) -> set[str]:
    names = {"tok_emb.weight"}
    for i in range(num_layers):
        names |= {f"blocks.{i}.attn.{m}.weight" for m in ("c_q", "c_k", "c_v", "proj")}
        names |= {f"blocks.{i}.mlp.{m}.weight" for m in ("fc", "proj")}
    return names


def random_batches(vocab: int, num_batches: int, batch: int = 2, seq: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (batch, seq), generator=g) for _ in range(num_batches)]


def test_gpt_hessians_cover_every_matmul_and_are_psd(tiny_cfg):
    model = GPT(tiny_cfg.model)
    m = tiny_cfg.model
    hessians, act_rms = collect_hessians(model, random_batches(m.vocab_size, 2))
    assert set(hessians) == expected_names(m.num_layers) == set(act_rms)
    for name, H in hessians.items():
        cols = m.mlp_hidden if name.endswith("mlp.proj.weight") else m.model_dim
        assert H.shape == (cols, cols) and H.dtype == torch.float32 and H.device.type == "cpu", name
        assert torch.allclose(H, H.T, atol=1e-5 * float(H.abs().max()) + 1e-12), name
        assert float(torch.linalg.eigvalsh(H.double()).min()) >= -1e-6 * float(H.abs().max()) - 1e-12, name
        assert act_rms[name].shape == (cols,) and bool((act_rms[name] >= 0).all())
        assert bool(torch.isfinite(H).all())
    # RMS² is the per-token mean of x², the Hessian diagonal the per-batch sum of it: one statistic
    num_tokens = 2 * 2 * 16  # batches x rows x seq, the head sees each token once
    H = hessians["tok_emb.weight"]
    assert torch.allclose(act_rms["tok_emb.weight"].square(), H.diagonal() * 2 / num_tokens, rtol=1e-4)
    for i in range(m.num_layers):
        q = f"blocks.{i}.attn.c_q.weight"
        for other in ("c_k", "c_v"):
            assert torch.equal(hessians[f"blocks.{i}.attn.{other}.weight"], hessians[q])
            assert torch.equal(act_rms[f"blocks.{i}.attn.{other}.weight"], act_rms[q])
    assert not model.looping and model.training  # state restored


def test_calibration_runs_the_policy_cast_model_without_autocast(tiny_cfg, monkeypatch):
    """As the seed: the model cast by the record's policy (bf16 embedding) calibrates without autocast, so
    every matmul input is bf16 (a bf16 residual stream); an autocast would hand the norms fp32 inputs.
    Run under an outer fp32 no-autocast policy too: the CPU model stays fp32."""
    from pgolf import emulation

    seen = defaultdict(set)
    observe = HessianAccumulator.observe

    def spy(self, name, x):
        seen[name].add(x.dtype)
        return observe(self, name, x)

    monkeypatch.setattr(HessianAccumulator, "observe", spy)
    policy = emulation.emulated_cuda_policy()
    with policy.activate():
        model = policy.cast_model(GPT(tiny_cfg.model))
        hessians, _ = collect_hessians(model, random_batches(tiny_cfg.model.vocab_size, 1))
    assert set(seen) == {n for n in expected_names(tiny_cfg.model.num_layers) if ".c_k." not in n and ".c_v." not in n}
    assert all(d == {torch.bfloat16} for d in seen.values()), dict(seen)
    assert all(H.dtype == torch.float32 and torch.isfinite(H).all() for H in hessians.values())
    seen.clear()
    collect_hessians(GPT(tiny_cfg.model), random_batches(tiny_cfg.model.vocab_size, 1))
    assert all(d == {torch.float32} for d in seen.values())


def test_gpt_looped_layers_accumulate_every_application(tiny_cfg):
    """Parity with an independent recording of every observed input; counts follow the looped schedule."""
    m = tiny_cfg.model
    model = GPT(m)
    model.train()
    batches = random_batches(m.vocab_size, 3, seed=1)

    seen: dict[str, list[torch.Tensor]] = defaultdict(list)
    model.eval()
    model.set_looping(True)
    with torch.no_grad(), model.observe(lambda name, x: seen[name].append(x.reshape(-1, x.shape[-1]).double())):
        for ids in batches:
            model(ids)
    model.set_looping(False)
    model.train()

    applications = Counter(looped_order(m))
    assert applications[m.loop_start] == m.num_loops + 1 > 1
    for i in range(m.num_layers):
        assert len(seen[f"blocks.{i}.attn.c_q.weight"]) == applications[i] * len(batches)

    hessians, act_rms = collect_hessians(model, batches)
    for name, xs in seen.items():
        X = torch.cat(xs)
        H_ref = (X.T @ X / len(batches)).float()
        assert torch.allclose(hessians[name], H_ref, rtol=1e-4, atol=1e-4 * float(H_ref.abs().max())), name
        assert torch.allclose(act_rms[name], X.square().mean(dim=0).sqrt().float(), rtol=1e-4), name


class LoopingStandIn(torch.nn.Module):
    """Two linear layers, the second applied `loops` times when looping is on; observer as GPT's."""

    def __init__(self, dim: int = 8, loops: int = 3):
        super().__init__()
        self.emb = torch.nn.Embedding(50, dim)
        self.a = torch.nn.Linear(dim, dim, bias=False)
        self.b = torch.nn.Linear(dim, dim, bias=False)
        self.loops = loops
        self.looping = False
        self._observer = None
        self.modes: list[tuple[bool, bool]] = []

    def set_looping(self, on: bool) -> None:
        self.looping = on

    @contextlib.contextmanager
    def observe(self, fn):
        self._observer = fn
        try:
            yield
        finally:
            self._observer = None

    def forward(self, ids):
        self.modes.append((self.training, self.looping, torch.is_grad_enabled()))
        x = self.emb(ids)
        self._observer("blocks.0.attn.c_q.weight", x)
        x = self.a(x)
        for _ in range(self.loops if self.looping else 1):
            self._observer("blocks.1.mlp.fc.weight", x)
            x = torch.tanh(self.b(x))
        return x


def test_stand_in_counts_and_mode():
    model = LoopingStandIn()
    batches = random_batches(50, 4, batch=3, seq=5)
    hessians, act_rms = collect_hessians(model, batches)
    assert model.modes == [(False, True, False)] * 4  # eval, looping, no grad
    assert model.training and not model.looping
    # the looped layer saw 3 applications per batch: its Hessian is the sum over all of them
    with torch.no_grad():
        xs = []
        for ids in batches:
            x = model.a(model.emb(ids))
            for _ in range(3):
                xs.append(x.reshape(-1, 8))
                x = torch.tanh(model.b(x))
        X = torch.cat(xs)
    assert X.shape[0] == 4 * 3 * 3 * 5
    assert torch.allclose(hessians["blocks.1.mlp.fc.weight"], X.T @ X / 4, rtol=1e-5, atol=1e-5)
    assert set(hessians) == {"blocks.0.attn.c_q.weight", "blocks.0.attn.c_k.weight", "blocks.0.attn.c_v.weight",
                             "blocks.1.mlp.fc.weight"}


def test_accumulator_counts_rows_and_calls():
    acc = HessianAccumulator()
    acc.observe("w", torch.ones(2, 3, 4))
    acc.observe("w", 2 * torch.ones(5, 4))
    assert acc.num_calls["w"] == 2 and acc.num_rows["w"] == 11
    H, rms = acc.result(num_batches=2)
    assert torch.allclose(H["w"], torch.full((4, 4), (6 * 1 + 5 * 4) / 2))
    assert torch.allclose(rms["w"], torch.full((4,), ((6 + 20) / 11) ** 0.5))


# --------------------------------------------------------------------------- training windows and the file
def test_calibration_file_roundtrip_and_refusals(tmp_path):
    H = {"a.weight": torch.eye(3)}
    rms = {"a.weight": torch.ones(3)}
    path = tmp_path / "calibration.pt"
    save_calibration(path, H, rms, seconds=1.5)
    got = load_calibration(path)
    assert got["seconds"] == 1.5 and torch.equal(got["hessians"]["a.weight"], H["a.weight"])
    assert torch.equal(got["act_rms"]["a.weight"], rms["a.weight"])
    with pytest.raises(DataError, match="no calibration file"):
        load_calibration(tmp_path / "missing.pt")
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataError, match="unreadable calibration file"):
        load_calibration(path)
    torch.save({"format": "something-else", "hessians": H}, path)
    with pytest.raises(DataError, match="not a pgolf calibration file"):
        load_calibration(path)
    torch.save({"hessians": H, "act_rms": rms, "seconds": 2.0}, path)  # the documented untagged layout
    assert load_calibration(path)["seconds"] == 2.0
