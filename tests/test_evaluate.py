"""Diagnostic evaluation: exact coverage, packing parity, distributed parity.

The invariants: every target is scored exactly once (packed and sliding,
tail included); a packed row scores each target as if its document piece ran
alone (attention never crosses a BOS); uniform logits give log2(V) bits per
token; two gloo ranks give the one-process sums.
"""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pgolf.config import EvalConfig, load_preset
from pgolf.data import ValData, find_docs, load_val
from pgolf.evaluate import eval_packed, packed_batches, rank_target_range
from pgolf.sliding_eval import eval_sliding, sliding_windows
from pgolf.loader import build_cu_seqlens
from pgolf.model import GPT

V = 64


def make_val(doc_lens: list[int], seed: int = 0) -> ValData:
    """A val stream of documents [BOS] + body (len each), byte counts 1..4 per token, BOS 0."""
    g = torch.Generator().manual_seed(seed)
    parts = [torch.cat([torch.tensor([1]), torch.randint(2, V, (n - 1,), generator=g)]) for n in doc_lens]
    tokens = torch.cat(parts).long()
    token_bytes = torch.randint(1, 5, tokens.shape, generator=g).int()
    token_bytes[tokens == 1] = 0
    return ValData(tokens=tokens, token_bytes=token_bytes, docs=find_docs(tokens))


class PrefixMeanLM(nn.Module):
    """A causal stand-in: logits from the mean embedding of the segment prefix (respects cu_seqlens)."""

    def __init__(self, vocab: int = V, dim: int = 16):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(256, dim) * 0.5)
        self.head = nn.Linear(dim, vocab)

    def forward(self, input_ids, target_ids=None, *, cu_seqlens=None, max_seqlen=None, reduction="mean"):
        b, n = input_ids.shape
        if cu_seqlens is None:
            cu_seqlens = torch.tensor([0, n], dtype=torch.int32)
        assert b == 1 or cu_seqlens.tolist() == [0, n]
        bounds = sorted(set(cu_seqlens.tolist()))
        h = self.emb(input_ids)
        out = torch.empty_like(h)
        for a, z in zip(bounds[:-1], bounds[1:]):
            seg = h[:, a:z]
            idx = torch.arange(1, z - a + 1, dtype=h.dtype)
            out[:, a:z] = seg.cumsum(1) / idx[None, :, None] + self.pos[: z - a]
        logits = self.head(torch.tanh(out)).float()
        if target_ids is None:
            return logits
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target_ids.reshape(-1), reduction="none")
        return nll.reshape(b, n) if reduction == "none" else nll.mean()


class UniformLM(nn.Module):
    def forward(self, input_ids, target_ids=None, *, cu_seqlens=None, max_seqlen=None, reduction="mean"):
        logits = torch.zeros(*input_ids.shape, V)
        nll = F.cross_entropy(logits.reshape(-1, V), target_ids.reshape(-1), reduction="none")
        return nll.reshape(input_ids.shape)


def per_piece_nll(model, tokens: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """NLL of targets a..b-1 running the piece tokens[a:b] alone (no packing)."""
    with torch.no_grad():
        return model(tokens[a:b][None], tokens[a + 1:b + 1][None], reduction="none").reshape(-1)


def collect(hook_store: dict):
    def hook(first: int, nll: torch.Tensor) -> None:
        for i, v in enumerate(nll.tolist()):
            assert first + i not in hook_store, f"target {first + i} scored twice"
            hook_store[first + i] = v
    return hook


# --------------------------------------------------------------------------- pure helpers
@pytest.mark.parametrize("num_targets,world,batch_tokens,seq", [(1000, 1, 256, 64), (1001, 2, 256, 64),
                                                                 (997, 3, 100, 64), (50, 8, 64, 64)])
def test_packed_batches_tile_every_target_once(num_targets, world, batch_tokens, seq):
    cfg = EvalConfig(eval_seq_len=seq, val_batch_tokens=batch_tokens)
    per_batch = max(1, batch_tokens // world // seq) * seq
    covered = []
    for r in range(world):
        lo, hi = rank_target_range(num_targets, r, world)
        batches = packed_batches(num_targets, cfg, r, world)
        assert all(e - s == per_batch for s, e in batches[:-1])
        if batches:
            assert batches[0][0] == lo and batches[-1][1] == hi
        for s, e in batches:
            covered.extend(range(s, e))
    assert covered == list(range(num_targets))


def test_cu_seqlens_cuts_at_bos_splits_long_segments_and_pads():
    x = torch.tensor([5, 6, 1, 7, 8, 9, 10, 11, 12, 1, 3])
    cu, longest = build_cu_seqlens(x, max_doc_len=4)
    assert cu.dtype == torch.int32 and cu.numel() % 64 == 0
    bounds = sorted(set(cu.tolist()))
    assert bounds == [0, 2, 6, 9, 11]
    assert longest == 4
    assert cu.tolist()[len(bounds):] == [11] * (cu.numel() - len(bounds))
    cu2, longest2 = build_cu_seqlens(x, max_doc_len=100, starts=[4])
    assert sorted(set(cu2.tolist())) == [0, 2, 4, 9, 11] and longest2 == 5


@pytest.mark.parametrize("n,seq,stride", [(100, 32, 8), (100, 32, 32), (31, 32, 8), (129, 32, 7), (1, 4, 4)])
def test_sliding_windows_score_every_target_once(n, seq, stride):
    windows = sliding_windows(n, seq, stride)
    scored = [t for _, s, e in windows for t in range(s, e)]
    assert scored == list(range(n))
    assert windows[0][:2] == (0, 0)
    for ws, ss, e in windows:
        assert e - ws <= seq and ws <= ss < e
    for ws, ss, e in windows[1:]:
        assert ss - ws == seq - stride and e - ss <= stride  # context of every later scored target


# --------------------------------------------------------------------------- eval on stand-in models
def test_uniform_logits_give_log2_vocab_bits_per_token():
    val = make_val([40, 7, 90, 3, 55])
    total_bytes = float(val.token_bytes[1:].sum())
    expect = math.log2(V) * val.num_targets / total_bytes
    for meter in (eval_packed(UniformLM(), val, EvalConfig(eval_seq_len=16, val_batch_tokens=48)),
                  eval_sliding(UniformLM(), val, seq_len=16, stride=5, batch_tokens=40)):
        assert meter.num_tokens == val.num_targets
        assert meter.sum_bytes == total_bytes
        assert meter.bpb() == pytest.approx(expect, rel=1e-6)  # fp32 CE of log(V)
        assert meter.loss() == pytest.approx(math.log(V), rel=1e-6)


def test_packed_eval_scores_every_target_once_in_batches_and_tail():
    val = make_val([300, 2, 17, 129, 64, 65, 5])
    seen: dict[int, float] = {}
    meter = eval_packed(PrefixMeanLM(), val, EvalConfig(eval_seq_len=32, val_batch_tokens=96),
                        on_scored=collect(seen))
    assert sorted(seen) == list(range(val.num_targets))
    assert meter.num_tokens == val.num_targets
    assert meter.sum_nats == pytest.approx(sum(seen.values()), rel=1e-6)


def test_packed_eval_equals_per_document_loop():
    """Batch and segment cap larger than any document: packing must equal running each document alone."""
    val = make_val([50, 3, 120, 77, 9, 200])
    model = PrefixMeanLM()
    seen: dict[int, float] = {}
    eval_packed(model, val, EvalConfig(eval_seq_len=256, val_batch_tokens=4096), on_scored=collect(seen))
    for start, length in val.docs:
        ref = per_piece_nll(model, val.tokens, start, start + length - 1)
        got = torch.tensor([seen[t] for t in range(start, start + length - 1)])
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_packed_eval_never_leaks_across_documents():
    """Changing one document's tokens changes no target outside it."""
    val = make_val([40, 60, 50])
    model = PrefixMeanLM()
    cfg = EvalConfig(eval_seq_len=128, val_batch_tokens=512)
    before: dict[int, float] = {}
    after: dict[int, float] = {}
    eval_packed(model, val, cfg, on_scored=collect(before))
    start, length = val.docs[1]
    val.tokens[start + 5:start + length - 1] = (val.tokens[start + 5:start + length - 1] + 7) % (V - 2) + 2
    eval_packed(model, val, cfg, on_scored=collect(after))
    changed = {t for t in before if abs(before[t] - after[t]) > 1e-6}
    assert changed and all(start + 4 <= t < start + length - 1 for t in changed)  # target t reads tokens <= t


def test_sliding_with_stride_equal_seq_len_is_non_overlapping_windows():
    val = make_val([70, 5, 140, 33])
    model = PrefixMeanLM()
    L = 32
    seen: dict[int, float] = {}
    eval_sliding(model, val, seq_len=L, stride=L, batch_tokens=3 * L, on_scored=collect(seen))
    for ws in range(0, val.num_targets, L):
        we = min(ws + L, val.num_targets)
        cuts = [ws] + [i for i in range(ws + 1, we) if val.tokens[i] == 1] + [we]
        for a, b in zip(cuts[:-1], cuts[1:]):
            got = torch.tensor([seen[t] for t in range(a, b)])
            torch.testing.assert_close(got, per_piece_nll(model, val.tokens, a, b), rtol=1e-5, atol=1e-5)


def test_sliding_scores_each_target_with_its_window_context():
    val = make_val([90, 4, 61])
    model = PrefixMeanLM()
    L, stride = 24, 6
    seen: dict[int, float] = {}
    eval_sliding(model, val, seq_len=L, stride=stride, batch_tokens=50, on_scored=collect(seen))
    for ws, ss, e in sliding_windows(val.num_targets, L, stride)[::3]:
        for t in range(ss, e):
            a = max([ws] + [i for i in range(ws, t + 1) if val.tokens[i] == 1])
            assert seen[t] == pytest.approx(per_piece_nll(model, val.tokens, a, t + 1)[-1].item(), abs=1e-5)


def test_sliding_eval_is_the_configs_switch():
    val = make_val([60, 30])
    model = PrefixMeanLM()
    a = eval_packed(model, val, EvalConfig(eval_seq_len=16, val_batch_tokens=64, sliding_stride=4))
    b = eval_sliding(model, val, seq_len=16, stride=4, batch_tokens=64)
    assert a.sum_nats == pytest.approx(b.sum_nats, rel=1e-9) and a.num_tokens == b.num_tokens


# --------------------------------------------------------------------------- the tiny GPT
def test_packed_eval_equals_per_document_loop_on_tiny_gpt():
    cfg = load_preset("tiny")
    model = GPT(cfg.model)
    val = make_val([40, 3, 100, 17, 64])
    val.tokens = val.tokens % cfg.model.vocab_size
    val.tokens[val.tokens == 1] = 2
    for start, _ in val.docs:
        val.tokens[start] = 1
    seen: dict[int, float] = {}
    meter = eval_packed(model, val, EvalConfig(eval_seq_len=128, val_batch_tokens=1024), on_scored=collect(seen))
    assert meter.num_tokens == val.num_targets
    for start, length in val.docs:
        ref = per_piece_nll(model.eval(), val.tokens, start, start + length - 1)
        got = torch.tensor([seen[t] for t in range(start, start + length - 1)])
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("emulate", [False, True])
def test_scored_models_take_their_policys_dtypes(emulate):
    """A dequantized model is scored in its policy's dtypes: under the record's policy the embedding is the
    bf16 rounding of the loaded fp32 weights (the seed loads into its bf16 parameter), the rest fp32 and
    RoPE on bf16-rounded frequencies; under the CPU policy nothing changes."""
    from pgolf import device, emulation
    from pgolf.evaluate import ready_for_scoring

    cfg = load_preset("tiny")
    model = GPT(cfg.model)
    emb = model.tok_emb.weight.detach().clone()
    policy = emulation.emulated_cuda_policy() if emulate else device.cpu_policy()
    with policy.activate():
        scored = ready_for_scoring(model)
        val = make_val([40, 30])
        val.tokens = val.tokens % cfg.model.vocab_size
        val.tokens[val.tokens == 1] = 2
        for start, _ in val.docs:
            val.tokens[start] = 1
        meter = eval_packed(scored, val, EvalConfig(eval_seq_len=128, val_batch_tokens=1024))
    assert scored.looping and not scored.training and math.isfinite(meter.bpb())
    want = emb.bfloat16() if emulate else emb
    assert torch.equal(scored.tok_emb.weight, want) and scored.qo_bank.dtype == torch.float32
    assert scored.rope_freq_dtype == (torch.bfloat16 if emulate else torch.float32)


def test_packed_eval_on_prepared_data_counts_every_target_and_byte(tiny_data):
    cfg = load_preset("tiny")
    val = load_val(tiny_data, val_docs_limit=6)
    meter = eval_packed(GPT(cfg.model), val, EvalConfig(eval_seq_len=64, val_batch_tokens=256))
    assert meter.num_tokens == val.num_targets
    assert meter.sum_bytes == val.target_bytes_total > 0
    assert 0 < meter.bpb() < 2 * math.log2(cfg.model.vocab_size) * val.num_targets / val.target_bytes_total


@pytest.mark.gpu
def test_cuda_bf16_eval_matches_cpu_fp32():
    """The CUDA path (bf16 autocast, FA3 when present) scores the same targets to within bf16 noise."""
    cfg = load_preset("tiny")
    model = GPT(cfg.model)
    model.set_looping(True)
    val = make_val([40, 3, 100, 17, 64, 128, 90])
    val.tokens = val.tokens % cfg.model.vocab_size
    ecfg = EvalConfig(eval_seq_len=64, val_batch_tokens=256)
    cpu = eval_packed(model, val, ecfg)
    gpu = eval_packed(model.cuda(), val, ecfg)
    assert gpu.num_tokens == cpu.num_tokens == val.num_targets and gpu.sum_bytes == cpu.sum_bytes
    assert gpu.bpb() == pytest.approx(cpu.bpb(), rel=2e-2)


# --------------------------------------------------------------------------- distributed parity
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Every batch edge of both runs (96, 192 = T/2, 288) falls on a BOS, so no document
# loses context to a cut in either run and the sums must agree exactly.
GLOO_DOCS = [20, 12, 64, 40, 56, 5, 91, 96, 1]


def _gloo_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from pgolf import distributed

    distributed.init_distributed(device="cpu")
    torch.manual_seed(0)
    model = PrefixMeanLM()
    val = make_val(GLOO_DOCS)
    packed = eval_packed(model, val, EvalConfig(eval_seq_len=32, val_batch_tokens=192))
    sliding = eval_sliding(model, val, seq_len=32, stride=8, batch_tokens=64)
    torch.save({"packed": [packed.sum_nats, packed.sum_bytes, packed.num_tokens],
                "sliding": [sliding.sum_nats, sliding.sum_bytes, sliding.num_tokens]},
               os.path.join(out_dir, f"rank{rank}.pt"))
    distributed.cleanup()


def test_two_gloo_ranks_equal_one_process(tmp_path):
    import torch.multiprocessing as mp

    torch.manual_seed(0)
    model = PrefixMeanLM()
    val = make_val(GLOO_DOCS)
    packed = eval_packed(model, val, EvalConfig(eval_seq_len=32, val_batch_tokens=192))
    sliding = eval_sliding(model, val, seq_len=32, stride=8, batch_tokens=64)
    mp.spawn(_gloo_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for name, ref in (("packed", packed), ("sliding", sliding)):
            nats, nbytes, ntok = got[name]
            assert ntok == ref.num_tokens and nbytes == ref.sum_bytes
            assert nats == pytest.approx(ref.sum_nats, rel=1e-6)
