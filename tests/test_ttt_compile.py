"""TTT under torch.compile with the record's (CUDA) policy, emulated on CPU.

The TTT compile warmup (`score_first._compile_and_warm`) compiles the LoRA
forward with the policy's TTT arguments and recompile limits, and runs every
variant it warms: the trained forward and backward through the K/O/MLP/head
adapters with an AdamW step, the no-grad scoring forward, and the frozen peers'
routed forward, over all-row, subset and one-row batches. Under emulation the
attention inside those graphs is FA3's stand-in custom op with FA3's input
contract checked while tracing, so a dtype that FA3 would reject fails here.
Global SGD runs the model eagerly, as the record's does, through the same op.

Dynamo's "eager" backend: graph capture, guards, recompiles and graph breaks are
all dynamo's, and AOT tracing (minutes on two cores) adds nothing to them.
"""

from __future__ import annotations

import pytest
import torch

from pgolf import attention, emulation
from pgolf.config import load_preset
from pgolf.model import GPT
from pgolf.synthetic import synthetic_val
from pgolf.ttt import score_first
from pgolf.ttt.global_sgd import run_global_sgd

STANDIN = torch.ops.pgolf.varlen_attention.default


class _Recorder:
    """A dynamo backend that runs each captured graph as is and keeps it for inspection."""

    def __init__(self):
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.graphs.append(gm)
        return gm.forward

    def standin_calls(self) -> list[int]:
        return [sum(n.op == "call_function" and n.target is STANDIN for n in gm.graph.nodes) for gm in self.graphs]


@pytest.fixture
def emulated():
    with emulation.emulated_cuda_policy().activate() as policy:
        yield policy


@pytest.fixture
def default_dynamo():
    """Dynamo's default limits, failing loudly at a limit hit (instead of silently running eager)."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    with torch._dynamo.config.patch(recompile_limit=8, accumulated_recompile_limit=256,
                                    fail_on_recompile_limit_hit=True):
        yield
    torch._dynamo.reset()


def _setup(policy):
    # Two layers keep every block kind (sequential, skip, parallel lanes, XSA) and halve the tracing time.
    cfg = load_preset("tiny", {
        "model.num_layers": 2, "model.loop_start": 0, "model.loop_end": 0, "model.parallel_start_layer": 1,
        "model.xsa_last_n": 2, "train.compile": "auto", "ttt.eval_seq_len": 16, "ttt.batch_size": 2,
        "ttt.chunk_size": 8, "ttt.short_chunk_steps": [[8, 4]], "ttt.peer_mode": "causal", "ttt.peer_k": 2,
        "ttt.global_chunk_tokens": 32})
    torch.manual_seed(0)
    model = policy.cast_model(GPT(cfg.model)).eval()
    model.set_looping(True)
    for p in model.parameters():
        p.requires_grad_(False)
    val = synthetic_val([5, 9, 12], cfg.model.vocab_size, seed=1)
    return cfg, model, score_first._Run(model, val, cfg, trace=None, dump=False)


def test_ttt_warmup_and_global_sgd_run_through_the_fa3_standin(emulated, default_dynamo, monkeypatch):
    """The warmup's graphs (8 here) each hold the stand-in op at every attention call, with no graph
    break: the policy's TTT compile allows breaks (fullgraph=False), but any break around attention would
    hand a stand-in call back to eager, so none is accepted. Then one global-SGD phase, eagerly."""
    cfg, model, run = _setup(emulated)
    assert "k" in cfg.ttt.lora_sites and run.ensemble.peers_on
    assert run.policy is not None and run.policy.emulated and run.policy.should_compile(cfg.train.compile)
    rec = _Recorder()
    fwd, _ = score_first._compile_and_warm(model, cfg, run, backend=rec)
    # The policy's limits replaced dynamo's defaults (8; the record's batch of 24 warms more variants than that).
    assert torch._dynamo.config.recompile_limit == emulated.recompile_limit
    # One graph per guard variant (train / score / peers x all rows / one row), each holding every attention
    # call of the model as the stand-in op: no variant fell back to eager, none broke around attention.
    assert 4 <= len(rec.graphs) <= emulated.recompile_limit
    assert rec.standin_calls() == [len(model.layer_schedule()[0]) + len(model.layer_schedule()[1])] * len(rec.graphs)
    assert sum(torch._dynamo.utils.counters["graph_break"].values()) == 0
    assert all(p.grad is None for p in model.parameters())  # the base stays frozen

    # Global SGD: the whole model (its bf16 embedding included), packed segments, the policy's autocast.
    calls = []

    def counted(q, k, v, cu_seqlens, max_seqlen, check):
        calls.append((q.dtype, k.dtype, v.dtype, cu_seqlens is not None, check))
        return emulation.varlen_attention(q, k, v, cu_seqlens, max_seqlen, check)

    monkeypatch.setattr(attention, "_FA3_STANDIN", counted)
    stream = synthetic_val([40, 30, 50], cfg.model.vocab_size, seed=2, period=5).tokens
    before = model.tok_emb.weight.detach().clone()
    info = run_global_sgd(model, stream, cfg.ttt)
    assert info["num_steps"] >= 1 and model.tok_emb.weight.dtype == torch.bfloat16
    assert not torch.equal(model.tok_emb.weight, before)
    assert calls and set(calls) == {(torch.bfloat16,) * 3 + (True, True)}

