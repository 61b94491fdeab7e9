"""pgolf.kernels: the eager references equal the model's math; the Triton kernels equal the references.

Triton parity runs on CPU tensors under Triton's interpreter, in a subprocess: the
interpreter is chosen by `TRITON_INTERPRET=1` when `@triton.jit` runs, i.e. when
`pgolf.triton_kernels` is first imported, so a fresh interpreter process is the only
way to be sure of it whatever else this session imported. The subprocess is this file
run as a script; it prints one JSON report of every case, and the tests assert on it.

Error measure: max|triton - reference| / max|reference|, per output and gradient.
- fp32: 1e-5. Both sides compute the same fp32 expressions; only the summation order of
  matmuls and reductions differs (measured ~3e-7, i.e. a few ulp), and the kernel's tanh
  (exp-based, with a polynomial near 0) is within ~2 ulp of torch.tanh.
- bf16: 1.6e-2 (4 bf16 ulps at the largest magnitude). The forward rounds exactly where
  eager does; the fused backward rounds `dpre` once from fp32 where eager autograd rounds
  after each of three bf16 ops, so gradients differ by about one bf16 ulp.
A control case compares the kernel against a deliberately wrong reference (slope 0.25,
cap 20) and must miss these tolerances by far, so a broken comparison cannot pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pgolf import kernels

FP32_TOL = 1e-5
BF16_TOL = 1.6e-2
REPO_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- the cases
def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    scale = want.detach().float().abs().max().clamp_min(1e-30)
    return float((got.detach().float() - want.detach().float()).abs().max() / scale)


def _mlp_inputs(device, requires_x=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    # 46 rows, dim 40, hidden 80: none a multiple of the interpreter's 16x32x16 tiles.
    x = torch.randn(2, 23, 40, generator=g).to(device).requires_grad_(requires_x)
    w_up = (torch.randn(80, 40, generator=g) / 40 ** 0.5).to(device).requires_grad_()
    w_down = (torch.randn(40, 80, generator=g) / 80 ** 0.5).to(device).requires_grad_()
    grad_out = torch.randn(2, 23, 40, generator=g).to(device)
    return x, w_up, w_down, grad_out


def _mlp_run(fn, x, w_up, w_down, grad_out, autocast_dtype=None):
    on = autocast_dtype is not None
    with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=on):
        out = fn(x, w_up, w_down)
    wrt = [t for t in (x, w_up, w_down) if t.requires_grad]
    grads = torch.autograd.grad(out, wrt, grad_out)
    names = [n for n, t in zip(("dx", "dw_up", "dw_down"), (x, w_up, w_down)) if t.requires_grad]
    return {"out": out, **dict(zip(names, grads))}


def _compare(got: dict, want: dict, tol: float) -> dict:
    assert got.keys() == want.keys(), (got.keys(), want.keys())
    return {"tol": tol,
            "errors": {k: _rel_err(got[k], want[k]) for k in want},
            "dtypes": {k: [str(got[k].dtype), str(want[k].dtype)] for k in want}}


def _wrong_slope_reference(x, w_up, w_down):
    h = torch.nn.functional.leaky_relu(x @ w_up.t(), negative_slope=0.25).square()
    return h @ w_down.t()


def _ce_inputs(device, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    # 37 rows over a vocab of 100 (the interpreter's vocab block is 32: 4 blocks, the last partial);
    # scale 20 puts many logits deep in the softcap's curved part.
    logits = (20 * torch.randn(37, 100, generator=g)).to(device=device, dtype=dtype).requires_grad_()
    targets = torch.randint(0, 100, (37,), generator=g).to(device)
    targets[[3, 17]] = kernels.IGNORE_INDEX
    upstream = torch.rand(37, generator=g).to(device) + 0.5
    return logits, targets, upstream


def _ce_run(fn, logits, targets, upstream, caps, reduction):
    loss = fn(logits, targets, *caps, reduction=reduction)
    weighted = (loss * upstream).sum() if reduction == "none" else loss
    tensors = [("dlogits", logits)] + [(f"dcap{i}", c) for i, c in enumerate(caps)
                                       if isinstance(c, torch.Tensor) and c.requires_grad]
    grads = torch.autograd.grad(weighted, [t for _, t in tensors])
    return {"loss": loss, **{n: g for (n, _), g in zip(tensors, grads)}}


def _cap(value, device):
    return torch.tensor(float(value), device=device, requires_grad=True)


def run_cases(device: str) -> dict:
    """Every parity case on `device`: {name: {"tol", "errors": {tensor: rel err}, "dtypes"}}."""
    fused_mlp = lambda *t: kernels.mlp_leaky_relu_sq(*t, use_triton=True)  # noqa: E731
    fused_ce = lambda *a, **k: kernels.softcapped_cross_entropy(*a, **k, use_triton=True)  # noqa: E731
    ref_mlp, ref_ce = kernels.mlp_leaky_relu_sq_reference, kernels.softcapped_cross_entropy_reference
    report = {}

    inp = _mlp_inputs(device)
    report["mlp_fp32"] = _compare(_mlp_run(fused_mlp, *inp), _mlp_run(ref_mlp, *inp), FP32_TOL)
    inp = _mlp_inputs(device, requires_x=False, seed=2)
    report["mlp_fp32_weight_grads_only"] = _compare(_mlp_run(fused_mlp, *inp), _mlp_run(ref_mlp, *inp), FP32_TOL)
    inp = _mlp_inputs(device, seed=3)
    report["mlp_bf16_autocast"] = _compare(_mlp_run(fused_mlp, *inp, autocast_dtype=torch.bfloat16),
                                           _mlp_run(ref_mlp, *inp, autocast_dtype=torch.bfloat16), BF16_TOL)

    # The record's training loss: scalar cap 30, mean over the non-ignored rows.
    logits, targets, up = _ce_inputs(device)
    report["ce_fp32_mean_cap30"] = _compare(_ce_run(fused_ce, logits, targets, up, (30.0,), "mean"),
                                            _ce_run(ref_ce, logits, targets, up, (30.0,), "mean"), FP32_TOL)
    # The scoring path: asymmetric caps as parameters (both get gradients), per-token NLL.
    caps = (_cap(25.0, device), _cap(35.0, device))
    report["ce_fp32_none_asym_tensor_caps"] = _compare(
        _ce_run(fused_ce, logits, targets, up, caps, "none"),
        _ce_run(ref_ce, logits, targets, up, caps, "none"), FP32_TOL)
    # One tensor cap for both signs: its gradient is the sum of both halves.
    caps = (_cap(30.0, device),)
    report["ce_fp32_sum_one_tensor_cap"] = _compare(_ce_run(fused_ce, logits, targets, up, caps, "sum"),
                                                    _ce_run(ref_ce, logits, targets, up, caps, "sum"), FP32_TOL)
    # Strided views (transposed logits, every other target, a transposed w_down) are read through their strides.
    g = torch.Generator().manual_seed(7)
    logits_vt = (20 * torch.randn(100, 37, generator=g)).to(device).requires_grad_()
    targets_2x = torch.randint(0, 100, (74,), generator=g).to(device)[::2]
    report["ce_fp32_none_strided"] = _compare(_ce_run(fused_ce, logits_vt.t(), targets_2x, up, (30.0,), "none"),
                                              _ce_run(ref_ce, logits_vt.t(), targets_2x, up, (30.0,), "none"),
                                              FP32_TOL)
    x, w_up, _, grad_out = _mlp_inputs(device, seed=8)
    w_down_t = (torch.randn(80, 40, generator=g) / 80 ** 0.5).to(device).requires_grad_()
    report["mlp_fp32_strided"] = _compare(_mlp_run(fused_mlp, x[:, ::2], w_up, w_down_t.t(), grad_out[:, ::2]),
                                          _mlp_run(ref_mlp, x[:, ::2], w_up, w_down_t.t(), grad_out[:, ::2]), FP32_TOL)
    # bf16 logits (the head's output under autocast) go in without an fp32 copy; the loss is fp32.
    logits, targets, up = _ce_inputs(device, dtype=torch.bfloat16, seed=4)
    report["ce_bf16_mean_cap30"] = _compare(_ce_run(fused_ce, logits, targets, up, (30.0,), "mean"),
                                            _ce_run(ref_ce, logits, targets, up, (30.0,), "mean"), BF16_TOL)

    # Controls: the same comparison against a wrong reference must fail by far.
    inp = _mlp_inputs(device)
    report["control_mlp_wrong_slope"] = _compare(_mlp_run(fused_mlp, *inp), _mlp_run(_wrong_slope_reference, *inp),
                                                 FP32_TOL)
    logits, targets, up = _ce_inputs(device)
    report["control_ce_wrong_cap"] = _compare(_ce_run(fused_ce, logits, targets, up, (30.0,), "mean"),
                                              _ce_run(ref_ce, logits, targets, up, (20.0,), "mean"), FP32_TOL)
    return report


def run_compiled_case(device: str) -> dict:
    """Both fused ops inside one torch.compile(fullgraph=True) region against the eager references.

    fullgraph turns any graph break into an error, so this checks that the custom ops trace
    as opaque nodes (their fake implementations give the shapes) and run forward and backward.
    aot_eager traces forward and backward like inductor but needs no C++ compiler on CPU.
    """
    x, w_up, w_down, grad_out = _mlp_inputs(device, seed=5)
    logits, targets, upstream = _ce_inputs(device, seed=6)
    cap_pos = _cap(25.0, device)

    def step(use_triton):
        def f(x, w_up, w_down, logits, cap_pos):
            out = kernels.mlp_leaky_relu_sq(x, w_up, w_down, use_triton=use_triton)
            nll = kernels.softcapped_cross_entropy(logits, targets, cap_pos, 35.0, reduction="none",
                                                   use_triton=use_triton)
            return (out * grad_out).sum() + (nll * upstream).sum()
        return f

    inputs = (x, w_up, w_down, logits, cap_pos)
    names = ("loss", "dx", "dw_up", "dw_down", "dlogits", "dcap_pos")
    compiled = torch.compile(step(True), backend="aot_eager", fullgraph=True)
    got_loss = compiled(*inputs)
    got = dict(zip(names, (got_loss, *torch.autograd.grad(got_loss, inputs))))
    want_loss = step(False)(*inputs)
    want = dict(zip(names, (want_loss, *torch.autograd.grad(want_loss, inputs))))
    return {"compiled_fullgraph": _compare(got, want, FP32_TOL)}


PARITY_CASES = ["mlp_fp32", "mlp_fp32_weight_grads_only", "mlp_bf16_autocast", "ce_fp32_mean_cap30",
                "ce_fp32_none_asym_tensor_caps", "ce_fp32_sum_one_tensor_cap", "ce_fp32_none_strided",
                "mlp_fp32_strided", "ce_bf16_mean_cap30"]
CONTROL_CASES = ["control_mlp_wrong_slope", "control_ce_wrong_cap"]


def _run_interpreted(*args: str) -> dict:
    if not kernels.triton_installed():
        pytest.skip("triton is not installed (pip install -e '.[test]' brings it); the Triton kernels are untested")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"parity subprocess failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _assert_case(entry: dict) -> None:
    for name, (got_dtype, want_dtype) in entry["dtypes"].items():
        assert got_dtype == want_dtype, f"{name}: dtype {got_dtype}, reference {want_dtype}"
    bad = {k: e for k, e in entry["errors"].items() if not e <= entry["tol"]}
    assert not bad, f"relative errors above {entry['tol']}: {bad}"


# ---------------------------------------------------------------- interpreter parity
@pytest.fixture(scope="module")
def interpreted_report():
    return _run_interpreted()


@pytest.mark.parametrize("case", PARITY_CASES)
def test_triton_matches_reference_interpreted(interpreted_report, case):
    _assert_case(interpreted_report[case])


@pytest.mark.parametrize("case", CONTROL_CASES)
def test_parity_check_catches_a_wrong_reference(interpreted_report, case):
    entry = interpreted_report[case]
    assert max(entry["errors"].values()) > 100 * entry["tol"], entry


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("PGOLF_SLOW"), reason="compiling takes ~25 s on 2 CPU cores: set PGOLF_SLOW=1")
def test_fused_ops_compile_fullgraph_interpreted():
    _assert_case(_run_interpreted("compile")["compiled_fullgraph"])


@pytest.mark.gpu
def test_triton_matches_reference_cuda(monkeypatch):
    """The same cases compiled for the GPU (TF32 off, so fp32 matmuls are IEEE on both sides)."""
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    report = run_cases("cuda")
    for case in PARITY_CASES:
        _assert_case(report[case])
    for case in CONTROL_CASES:
        assert max(report[case]["errors"].values()) > 100 * report[case]["tol"], report[case]
    _assert_case(run_compiled_case("cuda")["compiled_fullgraph"])


# ---------------------------------------------------------------- eager references (no Triton)
def test_mlp_reference_is_the_model_mlp():
    from pgolf.config import load_preset
    from pgolf.model import GPT, rms_norm

    model = GPT(load_preset("tiny").model)
    block = model.blocks[2]
    w_up, w_down = model.bank_weights(2)[4:]
    with torch.no_grad():
        block.mlp_scale.uniform_(0.5, 1.5)
        w_down.normal_()  # the real init zeroes the down-projection, which would hide everything
    x = torch.randn(2, 5, model.cfg.model_dim)
    got = block.mlp_scale * kernels.mlp_leaky_relu_sq_reference(rms_norm(x) * block.ln_scale_factor, w_up, w_down)
    want = block.mlp_branch(x, w_up, w_down, slot=0, adapters=None, observe=None)
    assert torch.equal(got, want)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_ce_reference_is_the_model_loss(reduction):
    """The model's loss from its own head output z: scalar cap for the mean, asymmetric caps per token."""
    from pgolf.config import load_preset
    from pgolf.model import GPT

    model = GPT(load_preset("tiny", {"model.asym_logit_rescale": True}).model)
    with torch.no_grad():
        model.softcap_pos.fill_(20.0)  # distinct caps, so the asymmetric branch is visible
        model.softcap_neg.fill_(40.0)
        model.tok_emb.weight.mul_(30.0)  # logits large enough for the softcap to bend them
    ids = torch.randint(2, model.cfg.vocab_size, (2, 9))
    targets = torch.randint(0, model.cfg.vocab_size, (2, 9))
    seen = {}
    with model.observe(lambda name, t: seen.__setitem__(name, t)):
        want = model(ids, targets, reduction=reduction)
    z = torch.nn.functional.linear(seen["tok_emb.weight"], model.tok_emb.weight).float()
    z = z.reshape(-1, model.cfg.vocab_size)
    caps = (model.cfg.logit_softcap,) if reduction == "mean" else (model.softcap_pos, model.softcap_neg)
    got = kernels.softcapped_cross_entropy_reference(z, targets.reshape(-1), *caps, reduction=reduction)
    torch.testing.assert_close(got.reshape(want.shape), want, rtol=0, atol=0)
    # The asymmetric caps really change the per-token loss (else this test proves less than it says).
    sym = kernels.softcapped_cross_entropy_reference(z, targets.reshape(-1), 30.0, reduction="none")
    assert reduction == "mean" or not torch.allclose(sym, got)


def test_softcap_reference_asymmetric_uses_the_sign():
    z = torch.tensor([-60.0, -1.0, 0.0, 1.0, 60.0])
    got = kernels.softcap_reference(z, 10.0, 40.0)
    want = torch.tensor([-40 * torch.tanh(torch.tensor(1.5)), -40 * torch.tanh(torch.tensor(1 / 40)), 0.0,
                         10 * torch.tanh(torch.tensor(0.1)), 10 * torch.tanh(torch.tensor(6.0))])
    torch.testing.assert_close(got, want)
    assert got.max() < 10 and got.min() > -40


def test_dispatch_uses_the_reference_on_cpu_without_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, w_up, w_down, _ = _mlp_inputs("cpu")
    assert not kernels.triton_available(x)
    assert torch.equal(kernels.mlp_leaky_relu_sq(x, w_up, w_down), kernels.mlp_leaky_relu_sq_reference(x, w_up, w_down))
    logits, targets, _ = _ce_inputs("cpu")
    assert torch.equal(kernels.softcapped_cross_entropy(logits, targets, 30.0),
                       kernels.softcapped_cross_entropy_reference(logits, targets, 30.0))
    with pytest.raises(RuntimeError, match="Triton cannot run here"):
        kernels.mlp_leaky_relu_sq(x, w_up, w_down, use_triton=True)
    with pytest.raises(ValueError, match="reduction"):
        kernels.softcapped_cross_entropy(logits, targets, 30.0, reduction="avg")


def test_triton_is_optional(monkeypatch):
    """Without triton installed, availability is False and nothing tries to import it."""
    monkeypatch.setattr(kernels, "triton_installed", lambda: False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not kernels.triton_available()
    x, w_up, w_down, _ = _mlp_inputs("cpu")
    assert torch.equal(kernels.mlp_leaky_relu_sq(x, w_up, w_down), kernels.mlp_leaky_relu_sq_reference(x, w_up, w_down))


if __name__ == "__main__":
    # The parity subprocess (see the module docstring): TRITON_INTERPRET=1 is set by the caller.
    assert os.environ.get("TRITON_INTERPRET") == "1", "run through pytest, which sets TRITON_INTERPRET=1"
    torch.set_num_threads(1)
    print(json.dumps(run_compiled_case("cpu") if sys.argv[1:] == ["compile"] else run_cases("cpu")))
