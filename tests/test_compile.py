"""The compiled training step under the record's CUDA policy, proven on CPU.

`pgolf.emulation` runs the CUDA policy on the CPU: bf16 embedding, bf16 autocast, fullgraph compile and
FlashAttention 3's contract through its traceable stand-in op. Here the tiny preset trains with
`compile=on` and a compile warmup, every `torch.compile` routed to a counting backend (aot_eager: dynamo
and AOT autograd trace the forward and backward as inductor would see them, without code generation).
The run must build one fullgraph per (stage x looping x cu_seqlens bucket) variant the warmup lists
(more than dynamo's default recompile limit of 8, the record's FailOnRecompileLimitHit), never break a
graph, and never compile again in the timed loop.
"""

from __future__ import annotations

import pytest
import torch

from pgolf import emulation, train as train_mod
from pgolf.config import load_preset
from pgolf.loader import build_cu_seqlens


class _GraphRecorder:
    """A torch.compile backend that keeps every graph dynamo hands it and runs it as traced ("eager")."""

    def __init__(self):
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return gm.forward

    def model_graphs(self) -> int:
        """Graphs of the model's forward (Polar Express, compiled too, has no attention)."""
        return sum("varlen_attention" in str(gm.graph) for gm in self.graphs)


@pytest.fixture
def fresh_dynamo():
    """Dynamo's default limits (8 graphs per frame) and an empty code cache, restored afterwards."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    with torch._dynamo.config.patch(recompile_limit=8, accumulated_recompile_limit=256):
        yield
    torch._dynamo.reset()


def _compiled_run(tmp_path, data, monkeypatch, cfg):
    """Train `cfg` under the emulated CUDA policy; returns (recorder, graphs after the warmup, summary)."""
    recorder, seen = _GraphRecorder(), {}
    real_compile, real_warmup = torch.compile, train_mod._compile_warmup

    def compile_with_recorder(fn, **kwargs):
        return real_compile(fn, **{**kwargs, "backend": recorder})

    def warmup(*args, **kwargs):
        seconds = real_warmup(*args, **kwargs)
        seen["after_warmup"] = recorder.model_graphs()
        return seconds

    monkeypatch.setattr(torch, "compile", compile_with_recorder)
    monkeypatch.setattr(train_mod, "_compile_warmup", warmup)
    with emulation.emulated_cuda_policy().activate():
        summary = train_mod.train(cfg, data, tmp_path / "run")
    return recorder, seen["after_warmup"], summary


def test_training_compiles_each_warmup_variant_once_as_one_graph(tmp_path, tiny_data, monkeypatch, fresh_dynamo):
    cfg = load_preset("tiny", {"train.compile": "on", "train.warmup_steps": 1, "train.iterations": 10,
                               "eval.val_docs_limit": 2, "quant.calibration_batches": 1})
    row_tokens = cfg.train.train_batch_tokens // train_mod.grad_accum_steps(cfg.train, 1)
    variants = train_mod.warmup_variants(cfg, row_tokens)
    keys = {(n, looped, cu.numel()) for n, looped, cu in variants}
    assert len(keys) == len(variants) > torch._dynamo.config.recompile_limit
    # The warmup's real steps run at the first stage's length plain and looped, with the loader's
    # cu_seqlens (one bucket on this data); the looped one is a shape no stage meets.
    first = cfg.train.seq_len_stages[0][0]
    cu_len = build_cu_seqlens(torch.zeros(row_tokens, dtype=torch.long), first)[0].numel()
    keys |= {(first, False, cu_len), (first, True, cu_len)}

    recorder, after_warmup, summary = _compiled_run(tmp_path, tiny_data, monkeypatch, cfg)

    assert after_warmup == len(keys)  # one graph per variant: no graph break splits a forward
    assert recorder.model_graphs() == after_warmup  # the timed loop (3 stages, looping on) never recompiles
    assert not torch._dynamo.utils.counters["graph_break"]
    assert summary["steps"] == 10
    # The record's dtype rule held through training and the EMA copy-back: the saved embedding is bf16.
    saved = torch.load(tmp_path / "run" / "final_model.pt", weights_only=True)["state_dict"]
    assert saved["tok_emb.weight"].dtype == torch.bfloat16
    assert saved["qo_bank"].dtype == torch.float32
