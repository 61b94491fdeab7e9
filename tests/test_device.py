"""pgolf.device: the three policies, the dtype rule, compile and recompile limits, and the FA3 contract
on the paths a CUDA run takes (training forward, TTT with LoRA), checked on CPU.

Two stand-ins for a GPU: the emulated CUDA policy (real numbers, CPU bf16 autocast, the FA3 stand-in
op) and a fake-CUDA trace (FakeTensorMode tensors on device "cuda" with CUDA autocast forced on), which
applies the installed torch's own CUDA autocast rules without computing anything.
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pgolf import attention as attn_mod
from pgolf import device, emulation
from pgolf.attention import attention
from pgolf.config import load_preset
from pgolf.errors import ConfigError
from pgolf.model import GPT
from pgolf.ttt.lora import BatchedLoRA


@pytest.fixture
def emulated():
    with emulation.emulated_cuda_policy().activate() as policy:
        yield policy


@pytest.fixture
def fresh_dynamo():
    """Dynamo's default limits and an empty code cache, restored afterwards."""
    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=8, accumulated_recompile_limit=256):
        yield
    torch._dynamo.reset()


# --------------------------------------------------------------------------- the policies
def test_cpu_policy_is_todays_cpu_behaviour():
    p = device.cpu_policy()
    assert (p.device, p.emulated, p.lowp_dtype, p.rope_freq_dtype, p.autocast_dtype, p.tf32) == (
        torch.device("cpu"), False, torch.float32, torch.float32, None, False)
    assert (p.attention, p.check_fa3_contract, p.fused_kernels, p.should_compile("auto")) == (
        "sdpa", False, False, False)
    # The training forward (train._Run compiles through policy.compile) and the TTT LoRA forward.
    assert p.compile_kwargs() == {"fullgraph": False, "dynamic": False}
    assert p.compile_kwargs(ttt=True) == {"fullgraph": False, "dynamic": True}
    model = GPT(load_preset("tiny").model)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    p.cast_model(model)
    assert all(t.dtype == torch.float32 and torch.equal(t, before[n]) for n, t in model.state_dict().items())
    with p.autocast():
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("fa3", [True, False])
def test_cuda_policy_is_the_records(fa3):
    p = device.cuda_policy("cuda", fa3=fa3, triton=True)
    assert (p.lowp_dtype, p.lowp_params, p.rope_freq_dtype, p.autocast_dtype, p.tf32, p.should_compile("auto")) == (
        torch.bfloat16, ("tok_emb.weight",), torch.bfloat16, torch.bfloat16, True, True)
    assert (p.recompile_limit, p.accumulated_recompile_limit) == (128, 1024)
    assert (p.attention, p.check_fa3_contract, p.fused_kernels) == ("fa3" if fa3 else "sdpa", fa3, True)
    # One graph with FA3; without it SDPA's packed mask needs a graph break. TTT: dynamic shapes.
    assert p.compile_kwargs() == {"fullgraph": fa3, "dynamic": False}
    assert p.compile_kwargs(ttt=True) == {"fullgraph": False, "dynamic": True}


def test_emulation_is_the_cuda_policy_on_cpu():
    e = emulation.emulated_cuda_policy()
    assert e.device == torch.device("cpu") and e.emulated
    assert dataclasses.replace(e, device=torch.device("cuda"), emulated=False) == \
        device.cuda_policy("cuda", fa3=True, triton=False)


@pytest.mark.parametrize("value,emulate", [("", False), ("cuda", True), (" CUDA ", True), ("gpu", None)])
def test_emulation_is_read_from_the_environment(value, emulate):
    env = {emulation.EMULATE_ENV: value}
    if emulate is None:
        with pytest.raises(ConfigError, match=emulation.EMULATE_ENV):
            emulation.read_emulation(env)
        return
    assert emulation.read_emulation(env) is emulate
    with device.cpu_policy().activate():
        policy = emulation.activate_from_env(env)
        want = emulation.emulated_cuda_policy() if emulate else device.cpu_policy()
        assert policy == want and device.policy_for("cpu") == want  # the process's policy stays in force
        assert device.policy_for("cuda").device.type == "cuda" and not device.policy_for("cuda").emulated
    assert not device.active().emulated


def test_activation_nests_and_restores():
    outer = device.active()
    e = emulation.emulated_cuda_policy()
    with e.activate():
        assert device.active() is e and device.active().attention == "fa3"
        with device.cpu_policy().activate():
            assert device.active().attention == "sdpa"
        assert device.active() is e
    assert device.active() is outer


def test_should_compile_rejects_unknown_settings():
    with pytest.raises(ConfigError):
        device.cpu_policy().should_compile("yes")


# --------------------------------------------------------------------------- the dtype rule
SEED_CONTROL_PATTERNS = ("attn_scale", "attn_scales", "mlp_scale", "mlp_scales", "resid_mix", "resid_mixes",
                         "q_gain", "skip_weight", "skip_weights", "skip_gates", "parallel_post_lambdas",
                         "parallel_resid_lambdas", "attn_gate_proj", "attn_gate_w", "smear_gate", "smear_lambda")


def _seed_bf16_names(model: nn.Module) -> set[str]:
    """What the record's `.bfloat16()` + restore leaves in bf16: it restores the four banks, its small
    linears (pgolf's are matched by the control patterns), every tensor with ndim < 2 and the control tensors."""
    return {n for n, p in model.named_parameters()
            if p.ndim >= 2 and "_bank" not in n and not any(pat in n for pat in SEED_CONTROL_PATTERNS)}


@pytest.mark.parametrize("preset", ["tiny", "seed", "record"])
def test_dtype_rule_is_the_records_restore_rule(preset):
    with torch.device("meta"):
        model = GPT(load_preset(preset).model)
    assert _seed_bf16_names(model) == set(device.cuda_policy(fa3=False, triton=False).lowp_params)


def test_cast_model_stores_only_the_embedding_in_bf16(emulated):
    model = emulated.cast_model(GPT(load_preset("tiny").model))
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert dtypes.pop("tok_emb.weight") == torch.bfloat16
    assert set(dtypes.values()) == {torch.float32}
    with pytest.raises(KeyError, match="emb"):
        dataclasses.replace(emulated, lowp_params=("emb.weight",)).cast_model(model)


@pytest.mark.parametrize("policy,want", [(device.cpu_policy(), torch.float32),
                                         (emulation.emulated_cuda_policy(), torch.bfloat16)])
def test_cast_model_sets_the_rope_frequency_dtype_where_declared(policy, want):
    class Declares(nn.Module):
        rope_freq_dtype = torch.float32

        def __init__(self):
            super().__init__()
            self.tok_emb = nn.Embedding(4, 2)

    assert policy.cast_model(Declares()).rope_freq_dtype == want
    assert device.cuda_policy(fa3=False, triton=False).rope_freq_dtype == torch.bfloat16
    # The record's model.bfloat16() rounds its RoPE frequencies: that is what bf16 here stands for.
    freqs = 1.0 / 1e4 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16)
    assert not torch.equal(freqs.to(want).float(), freqs) or want == torch.float32


def test_emulated_autocast_is_cpu_bf16(emulated):
    x, w = torch.randn(2, 8), torch.randn(4, 8)
    with emulated.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert F.linear(x, w).dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")


def test_tf32_touches_only_a_real_cuda_policy():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    onednn = torch.backends.mkldnn.matmul.fp32_precision
    try:
        emulation.emulated_cuda_policy().apply_matmul_precision()
        device.cpu_policy().apply_matmul_precision()
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
        device.cuda_policy(fa3=False, triton=False).apply_matmul_precision()
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert torch.backends.mkldnn.matmul.fp32_precision == onednn  # CPU matmuls (GPTQ) stay fp32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


# --------------------------------------------------------------------------- compile and recompile limits
class _PackedAttention(nn.Module):
    """The guard structure of the training forward: row length, looping, cu_seqlens bucket, max_seqlen."""

    def __init__(self, dim=32, heads=4, kv_heads=2):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.qkv = nn.Linear(dim, dim + 2 * kv_heads * self.head_dim, bias=False)
        self.looping = False

    def forward(self, x, cu_seqlens, max_seqlen):
        for _ in range(2 if self.looping else 1):
            q, k, v = self.qkv(x).split([self.heads * self.head_dim] + [self.kv_heads * self.head_dim] * 2, -1)
            shape = (x.shape[0], x.shape[1], -1, self.head_dim)
            y = attention(q.reshape(shape), k.reshape(shape).contiguous(), v.reshape(shape).contiguous(),
                          cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
            x = x + y.reshape(x.shape)
        return x.float().square().mean()


def _warmup_variants():
    """12 (row length, looping, bucket) shapes, like the record's compile warmup (15 at full size)."""
    for seq_len in (32, 64):
        for looping in (False, True):
            for bucket in (4, 8, 12):
                cu = torch.full((bucket,), seq_len, dtype=torch.int32)
                cu[:3] = torch.tensor([0, seq_len // 4, seq_len // 2])
                yield seq_len, looping, cu, seq_len // 2


def _run_warmup(module, compiled, emulated):
    for seq_len, looping, cu, max_seqlen in _warmup_variants():
        module.looping = looping
        with emulated.autocast():
            compiled(torch.randn(1, seq_len, 32), cu, max_seqlen).backward()


def test_fullgraph_warmup_needs_the_policys_recompile_limits(emulated, fresh_dynamo):
    module = _PackedAttention()
    plain = torch.compile(module, backend="eager", **emulated.compile_kwargs())
    with pytest.raises(torch._dynamo.exc.FailOnRecompileLimitHit):
        _run_warmup(module, plain, emulated)
    torch._dynamo.reset()
    _run_warmup(module, emulated.compile(module, backend="eager"), emulated)
    assert torch._dynamo.config.recompile_limit == emulated.recompile_limit == 128
    assert torch._dynamo.config.accumulated_recompile_limit == 1024


def _tiny_packed_batch(vocab_size):
    g = torch.Generator().manual_seed(3)
    x, y = (torch.randint(2, vocab_size, (1, 48), generator=g) for _ in range(2))
    return x, y, torch.tensor([0, 13, 30, 48, 48, 48], dtype=torch.int32), 18


def test_tiny_gpt_compiles_as_one_graph_in_emulation(emulated, fresh_dynamo):
    """Forward + backward of the training loss through the FA3 stand-in, fullgraph, zero breaks, eager's numbers."""
    from torch._dynamo.testing import CompileCounterWithBackend

    # Two layers still have every kind of block (sequential, skip, parallel lanes, XSA); AOT tracing time
    # grows with depth, and the graph is what matters here.
    cfg = load_preset("tiny", {"model.num_layers": 2, "model.loop_start": 0, "model.loop_end": 0,
                               "model.parallel_start_layer": 1, "model.xsa_last_n": 2})
    model = emulated.cast_model(GPT(cfg.model))
    x, y, cu, max_seqlen = _tiny_packed_batch(cfg.model.vocab_size)
    counter = CompileCounterWithBackend("aot_eager")
    emulated.apply_dynamo_limits()
    compiled = torch.compile(model, backend=counter, **emulated.compile_kwargs())
    assert emulated.compile_kwargs()["fullgraph"]  # a graph break would raise, not fall back
    grads = []
    for fwd in (compiled, model):
        model.zero_grad(set_to_none=True)
        with emulated.autocast():
            loss = fwd(x, y, cu_seqlens=cu, max_seqlen=max_seqlen)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    assert counter.frame_count == 1
    assert model.tok_emb.weight.grad.dtype == torch.bfloat16
    assert torch.equal(grads[0][0], grads[1][0])
    for got, want in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_inductor_compiles_the_stand_in_op(emulated, fresh_dynamo):
    module = _PackedAttention()
    seq_len, _, cu, max_seqlen = next(_warmup_variants())
    x = torch.randn(1, seq_len, 32)
    compiled = emulated.compile(module)
    with emulated.autocast():
        got = compiled(x, cu, max_seqlen)
        want = module(x, cu, max_seqlen)
    got.backward()
    torch.testing.assert_close(got, want, atol=1e-2, rtol=1e-2)


# --------------------------------------------------------------------------- TTT under the contract
@pytest.mark.parametrize("residual", ["bf16 (policy dtype rule)", "fp32 (no dtype rule)"])
def test_ttt_forwards_meet_the_fa3_contract(emulated, residual):
    """Score-first TTT's forwards (LoRA train step, no-grad scoring, frozen peers) and global SGD's packed
    step, under bf16 autocast with the contract on. With the pre-fix LoRA the fp32-residual case raised:
    its K delta was fp32 beside bf16 q and v."""
    cfg = load_preset("tiny")
    torch.manual_seed(0)
    model = GPT(cfg.model)
    if residual.startswith("bf16"):
        emulated.cast_model(model)
    model.set_looping(True)
    for p in model.parameters():
        p.requires_grad_(False)
    assert "k" in cfg.ttt.lora_sites
    bsz, ctx = 3, 16
    lora = BatchedLoRA(cfg.model, cfg.ttt, bsz, model.num_slots, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for b in lora.b.values():
            b.normal_(0, 0.05)
    x = torch.randint(2, cfg.model.vocab_size, (bsz, ctx + 1))
    with emulated.autocast():
        logits = model(x[:, :-1], adapters=lora)
    nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
    nll.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in lora.parameters())
    peers = lora.snapshot()
    peers.peer_index = torch.tensor([2, 0])
    with torch.no_grad(), emulated.autocast():
        model(x[:2, :-1], adapters=peers)
        lora.peer_index = torch.tensor([1])
        model(x[1:2, :-1], adapters=lora)
    for p in model.parameters():  # global SGD: the whole model on a packed stream
        p.requires_grad_(True)
    xs, ys, cu, max_seqlen = _tiny_packed_batch(cfg.model.vocab_size)
    with emulated.autocast():
        loss = model(xs, ys, cu_seqlens=cu, max_seqlen=max_seqlen)
    loss.backward()
    assert torch.isfinite(model.qo_bank.grad).all()


# --------------------------------------------------------------------------- fake-CUDA dtype trace
class _BasicIndexing(torch.overrides.TorchFunctionMode):
    """`t[...]` with None/int/slice/Ellipsis as aten view ops: Python indexing takes a CUDA device guard,
    which a CPU-only build does not have, even for fake tensors."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.__getitem__:
            t, index = args
            index = index if isinstance(index, tuple) else (index,)
            if all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in index):
                real_dims = sum(1 for i in index if i is not None and i is not Ellipsis)
                out, dim = t, 0
                for i in index:
                    if i is Ellipsis:
                        dim += t.ndim - real_dims
                    elif i is None:
                        out, dim = torch.ops.aten.unsqueeze.default(out, dim), dim + 1
                    elif isinstance(i, int):
                        out = torch.ops.aten.select.int(out, dim, i)
                    else:
                        stop = i.stop if i.stop is not None else out.shape[dim]
                        out = torch.ops.aten.slice.Tensor(out, dim, i.start or 0, stop, i.step or 1)
                        dim += 1
                return out
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _fake_cuda_autocast():
    """Fake tensors (no compute), no grad, and CUDA bf16 autocast switched on directly (`torch.autocast`
    refuses without a GPU); the autocast cache is off because it would take a CUDA device guard."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    saved = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"), torch.is_autocast_cache_enabled())
    with FakeTensorMode(allow_non_fake_inputs=True), _BasicIndexing(), torch.no_grad():
        torch.set_autocast_enabled("cuda", True)
        torch.set_autocast_dtype("cuda", torch.bfloat16)
        torch.set_autocast_cache_enabled(False)
        torch.autocast_increment_nesting()
        try:
            yield
        finally:
            torch.autocast_decrement_nesting()
            torch.set_autocast_enabled("cuda", saved[0])
            torch.set_autocast_dtype("cuda", saved[1])
            torch.set_autocast_cache_enabled(saved[2])


def _to_fake_cuda(module: nn.Module) -> nn.Module:
    for sub in module.modules():
        for name, p in list(sub.named_parameters(recurse=False)):
            sub._parameters[name] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device="cuda"),
                                                 requires_grad=False)
    return module


def _fake_cuda_forwards(monkeypatch, residual: str) -> None:
    """The tiny model's dense, LoRA and packed forwards, traced with the installed torch's CUDA autocast rules."""
    monkeypatch.setattr(attn_mod, "_fa3", None)  # the stand-in's fake implementation checks the contract
    cfg = load_preset("tiny")
    with torch.device("meta"):
        model = GPT(cfg.model)
    model.set_looping(True)
    lora = BatchedLoRA(cfg.model, cfg.ttt, 2, model.num_slots)
    policy = device.cuda_policy("cuda", fa3=True, triton=False)
    with policy.activate(), _fake_cuda_autocast():
        _to_fake_cuda(model)
        _to_fake_cuda(lora)
        if residual.startswith("bf16"):
            policy.cast_model(model)
        x = torch.randint(2, cfg.model.vocab_size, (2, 16), device="cuda")
        model(x)
        model(x, adapters=lora)
        cu = torch.zeros(4, dtype=torch.int32, device="cuda")  # values unread: fake tensors carry metadata only
        model(x[:1], x[:1], cu_seqlens=cu, max_seqlen=16)  # the packed training / global-SGD forward


@pytest.mark.parametrize("residual", ["bf16 (policy dtype rule)", "fp32 (no dtype rule)"])
def test_cuda_autocast_trace_meets_the_fa3_contract(monkeypatch, residual):
    """Under the installed torch's CUDA autocast (which runs F.rms_norm in fp32 since 2.12) every attention
    input is bf16, with and without the dtype rule, through the LoRA forward too: model.rms_norm returns
    its input's dtype. Before that fix q and k reached attention as fp32 beside a bf16 v."""
    _fake_cuda_forwards(monkeypatch, residual)
