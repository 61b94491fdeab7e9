"""Score-first TTT: queue order, chunk schedule, windows, parity with the base model, phased global SGD, ranks."""

from __future__ import annotations

import copy
import os
import socket

import pytest
import torch

from pgolf.config import TTTConfig
from pgolf.model import GPT
from pgolf.ttt.global_sgd import cosine_lr, pause_points, phase_boundaries, run_global_sgd, sgd_stream
from pgolf.synthetic import synthetic_val
from pgolf.ttt.score_first import (DocSpan, build_queue, build_windows, chunk_size_for, chunk_span, num_chunks,
                                   run_ttt)

DOC_TARGETS = [4, 7, 10, 15, 21, 30, 9, 5]


def small_cfg(tiny_cfg, **ttt):
    """Tiny model; windows of 16 so the 30-target doc slides; batches of 3 (the last one partial).

    One virtual rank: one process scores every batch in queue order, as #2139 did on one GPU."""
    base = {"eval_seq_len": 16, "batch_size": 3, "chunk_size": 8, "short_chunk_steps": [[8, 2], [16, 4]],
            "lora_lr": 0.01, "phased_prefix_docs": 0, "peer_mode": "off", "global_chunk_tokens": 32,
            "virtual_ranks": 1}
    base.update(ttt)
    return tiny_cfg.replace({f"ttt.{k}": v for k, v in base.items()})


def fresh_model(cfg, seed=0):
    torch.manual_seed(seed)
    return GPT(cfg.model).eval()


# --------------------------------------------------------------------------- pure parts


def test_queue_sorts_docs_and_orders_batches_longest_first():
    docs = [(0, 5), (5, 3), (8, 9), (17, 3), (20, 7), (27, 2), (29, 12)]
    queue = build_queue(docs, batch_size=3)
    # ascending by length (stable): 5:2, 1:3, 3:3 | 0:5, 4:7, 2:9 | 6:12
    assert [[d.index for d in b.docs] for b in queue] == [[6], [0, 4, 2], [5, 1, 3]]
    assert [b.batch_idx for b in queue] == [2, 1, 0]
    assert [b.max_len for b in queue] == [12, 9, 3]


def test_queue_ties_keep_ascending_batch_index():
    queue = build_queue([(i * 4, 4) for i in range(5)], batch_size=2)
    assert [b.batch_idx for b in queue] == [0, 1, 2]
    assert [d.index for b in queue for d in b.docs] == [0, 1, 2, 3, 4]


def test_default_chunk_schedule_is_2139s():
    cfg = TTTConfig()  # 256 -> 8, 2000 -> 24, else 48
    assert [chunk_size_for(m, cfg) for m in (2, 256, 257, 2000, 2001, 97114)] == [8, 8, 24, 24, 48, 48]


def test_chunk_spans_end_at_the_chunk_end():
    # pred_len 10, C 4, window 6: the last chunk ends at pred_len
    spans = [chunk_span(ci, 10, 4, 6) for ci in range(num_chunks(10, 4))]
    assert spans == [(0, 0, 4), (2, 4, 8), (4, 8, 10)]
    assert [chunk_span(ci, 8, 4, 16) for ci in range(2)] == [(0, 0, 4), (0, 4, 8)]


def test_windows_gather_the_right_tokens():
    val = synthetic_val([6, 11], vocab_size=50, seed=3)
    docs = [DocSpan(i, s, n) for i, (s, n) in enumerate(val.docs)]
    spans = [chunk_span(1, docs[0].pred_len, 4, 16), chunk_span(2, docs[1].pred_len, 4, 5)]
    w = build_windows(val.tokens, docs, spans)
    assert spans == [(0, 4, 6), (6, 8, 11)]
    assert w.valid.sum(1).tolist() == [2, 3]
    for i in range(2):
        for j in range(w.cols.shape[1]):
            if w.valid[i, j]:
                p, c = int(w.stream_pos[i, j]), int(w.cols[i, j])
                assert int(w.y[i, c]) == int(val.tokens[p]) and int(w.x[i, c]) == int(val.tokens[p - 1])
                assert p == docs[i].start + 1 + int(w.tpos[i, j])
    assert w.x.shape == (2, 6) and int(w.x[1, 5]) == 0 and int(w.y[1, 5]) == 0  # past row 1's window


def test_phase_boundaries_and_pause_points():
    assert phase_boundaries(8, 2, 10) == [4, 8]
    assert phase_boundaries(2500, 1, 50_000) == [2500]
    assert phase_boundaries(8, 1, 8) == []  # nothing left to score after it
    assert phase_boundaries(0, 3, 10) == [] and phase_boundaries(5, 0, 10) == []
    assert pause_points([1, 3, 3, 3], [4, 5]) == [(2, 4), (3, 5)]
    # A boundary already reached at the last pause still waits for one more batch per rank.
    assert pause_points([3, 3, 3, 3], [2, 3]) == [(1, 2), (2, 3)]
    # Two ranks: the other rank finishes its in-flight batch first; the second pause would leave nothing to score.
    assert pause_points([1, 3, 3, 3], [4, 5], num_ranks=2) == [(3, 4)]
    assert pause_points([3, 3, 3, 3], [2, 3], num_ranks=2) == [(2, 2)]


def test_pause_points_replay_the_records_log():
    """The record's queue: 50,000 documents in batches of 24, the partial batch (8 longest) first. Its 8-rank
    log pauses at `pd:2672` scored documents; one rank would pause at the first batch past 2,500."""
    sizes = [8] + [24] * (50_000 // 24)
    assert pause_points(sizes, [2500], num_ranks=8) == [(112, 2500)] and sum(sizes[:112]) == 2672
    assert pause_points(sizes, [2500]) == [(105, 2500)] and sum(sizes[:105]) == 2504


def test_sgd_stream_keeps_each_docs_span_with_its_trailing_bos():
    tokens = torch.tensor([1, 5, 6, 1, 7, 1, 8, 9, 1])
    stream = sgd_stream(tokens, [(3, 3), (0, 4)])  # [1 7 1] and [1 5 6 1]: the junction reads BOS BOS, as the seed's
    assert stream.tolist() == [1, 7, 1, 1, 5, 6, 1]
    assert sgd_stream(tokens, []).numel() == 0


def test_cosine_lr_over_chunks():
    assert cosine_lr(1e-3, 0, 5) == pytest.approx(1e-3)
    assert cosine_lr(1e-3, 2, 5) == pytest.approx(5e-4)
    assert cosine_lr(1e-3, 4, 5) == pytest.approx(0.0, abs=1e-12)


def test_global_sgd_trains_every_base_param_and_lowers_the_loss(tiny_cfg):
    cfg = small_cfg(tiny_cfg, global_lr=0.05, global_chunk_tokens=32)
    model = fresh_model(cfg)
    stream = synthetic_val([40, 40, 40], cfg.model.vocab_size, seed=1, period=5).tokens
    x, y = stream[:-1][None], stream[1:][None]
    with torch.no_grad():
        before = float(model(x, y))
    ref = copy.deepcopy(model)
    info = run_global_sgd(model, stream, cfg.ttt)
    assert info["num_chunks"] == 4 and info["num_steps"] == 3  # the last chunk is skipped
    with torch.no_grad():
        assert float(model(x, y)) < before
    changed = [n for (n, p), q in zip(model.named_parameters(), ref.parameters()) if not torch.equal(p, q)]
    assert "qo_bank" in changed and "tok_emb.weight" in changed


# --------------------------------------------------------------------------- the loop


def _reference_nll(model, val, cfg):
    """The window rule, one target at a time: target t of a doc sees [max(0, end - L), t] of its chunk."""
    out = torch.zeros(val.tokens.numel())
    docs = [DocSpan(i, s, n) for i, (s, n) in enumerate(val.docs)]
    for b in build_queue(val.docs, cfg.ttt.batch_size):
        chunk = chunk_size_for(b.max_len, cfg.ttt)
        for d in b.docs:
            for t in range(d.pred_len):
                ws, _, end = chunk_span(t // chunk, d.pred_len, chunk, cfg.ttt.eval_seq_len)
                x = val.tokens[d.start + ws: d.start + end][None]
                with torch.no_grad():
                    logits = model(x)[0, t - ws]
                out[d.start + 1 + t] = -torch.log_softmax(logits, -1)[val.tokens[d.start + 1 + t]]
    assert len(docs) == len(val.docs)
    return out[1:]


def test_zero_lr_equals_the_base_model_under_the_window_rule(tiny_cfg):
    cfg = small_cfg(tiny_cfg, lora_lr=0.0)
    val = synthetic_val(DOC_TARGETS, cfg.model.vocab_size, seed=2)
    model = fresh_model(cfg)
    model.set_looping(True)
    ref = _reference_nll(model, val, cfg)
    res = run_ttt(model, val, cfg, dump=True)
    torch.testing.assert_close(torch.from_numpy(res.nll_own).float(), ref, atol=1e-5, rtol=1e-5)
    assert res.own.sum_nats == pytest.approx(float(ref.double().sum()), rel=1e-6)


def test_ttt_beats_no_ttt_on_repetitive_docs(tiny_cfg):
    val = synthetic_val([60, 50, 40, 45, 55, 30], tiny_cfg.model.vocab_size, seed=4, period=4)
    base = run_ttt(fresh_model(tiny_cfg), val, small_cfg(tiny_cfg, lora_lr=0.0))
    ttt = run_ttt(fresh_model(tiny_cfg), val, small_cfg(tiny_cfg, lora_lr=0.02))
    assert ttt.own.bpb() < base.own.bpb() - 0.05


def test_coverage_dump_and_report(tiny_cfg):
    cfg = small_cfg(tiny_cfg, grad_steps=2)
    val = synthetic_val(DOC_TARGETS, cfg.model.vocab_size, seed=2)
    res = run_ttt(fresh_model(cfg), val, cfg, dump=True)
    assert res.target_tokens == val.num_targets == sum(DOC_TARGETS)
    assert res.own.num_tokens == val.num_targets and res.coverage_tokens == val.num_targets
    assert res.positions.tolist() == list(range(1, val.num_targets + 1))
    assert res.target_bytes.tolist() == val.token_bytes[1:].tolist()
    assert res.own.sum_bytes == float(val.token_bytes[1:].sum())
    assert res.nll_own.sum() == pytest.approx(res.own.sum_nats, rel=1e-9)
    assert (res.score_counts == 1).all()
    assert res.headline() == ("own", res.own) and res.ensemble is res.own
    assert res.peer_mode == "off" and res.route_fraction == 0.0 and res.compliant and not res.peers_on
    assert res.num_batches == 3 and set(res.phase_seconds) >= {"eval_s", "global_sgd_s"}


def test_base_model_frozen_during_ttt_and_untouched_after(tiny_cfg):
    cfg = small_cfg(tiny_cfg, phased_prefix_docs=3, global_lr=0.05, eval_seq_len=16, global_chunk_tokens=16)
    val = synthetic_val(DOC_TARGETS, cfg.model.vocab_size, seed=2)
    model = fresh_model(cfg)
    ref = copy.deepcopy(model)
    seen: list[tuple[int, bool]] = []

    def hook(module, args, kwargs):
        lora = kwargs.get("adapters")
        if lora is not None and hasattr(lora, "parameters"):
            base_trainable = sum(p.requires_grad for p in module.parameters())
            seen.append((base_trainable, all(p.requires_grad for p in lora.parameters())))

    model.register_forward_pre_hook(hook, with_kwargs=True)
    res = run_ttt(model, val, cfg)
    assert res.num_global_phases == 1
    assert seen and all(n == 0 and lora_on for n, lora_on in seen)  # adapters only, in every TTT forward
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), ref.parameters()))
    assert all(p.requires_grad for p in model.parameters()) and not model.looping


def test_phased_sgd_trains_the_records_doc_set_and_changes_later_scores(tiny_cfg):
    cfg = small_cfg(tiny_cfg, phased_prefix_docs=4, global_lr=0.05, global_chunk_tokens=16)
    val = synthetic_val(DOC_TARGETS, cfg.model.vocab_size, seed=2)
    trace: list = []
    phased = run_ttt(fresh_model(cfg), val, cfg, trace=trace, dump=True)
    plain = run_ttt(fresh_model(cfg), val, small_cfg(tiny_cfg), dump=True)
    queue = build_queue(val.docs, 3)
    whole_doc_updates = [e[1] for e in trace if e[0] == "update"
                         and len(e[2]) == val.docs[e[1]][1] - 1 and e[2][0] == val.docs[e[1]][0] + 1]
    # Scored before the pause: queue batches 0 ([21, 30] targets) and 1 ([9, 10, 15]). The record's set sorts
    # them by batch index, then row (shortest first), and keeps 4: the 30-target document is not trained on.
    assert [val.docs[i][1] - 1 for i in whole_doc_updates] == [9, 10, 15, 21]
    # The pause comes after batches 0 and 1 of the queue (4 docs need 2 batches): batch 2 sees the new base.
    early = [d for b in queue[:2] for d in b.docs]
    late = [d for d in queue[2].docs]
    for d in early:
        sl = slice(d.start, d.start + d.pred_len)
        assert (phased.nll_own[sl] == plain.nll_own[sl]).all()
    assert any((phased.nll_own[d.start: d.start + d.pred_len] != plain.nll_own[d.start: d.start + d.pred_len]).any()
               for d in late)


# --------------------------------------------------------------------------- two ranks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_cfg(tiny_cfg):
    return small_cfg(tiny_cfg, lora_lr=0.0, phased_prefix_docs=2, global_lr=0.05, global_chunk_tokens=32,
                     peer_mode="causal", schedule="dynamic")


def _gloo_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from pgolf import distributed
    from pgolf.config import load_preset

    distributed.init_distributed(device="cpu")
    cfg = _gloo_cfg(load_preset("tiny"))
    val = synthetic_val(DOC_TARGETS, cfg.model.vocab_size, seed=2)
    res = run_ttt(fresh_model(cfg), val, cfg, dump=True)
    torch.save({"own": [res.own.sum_nats, res.own.sum_bytes, res.own.num_tokens], "counts": res.score_counts,
                "coverage": res.coverage_tokens, "batches": res.num_batches},
               os.path.join(out_dir, f"rank{rank}.pt"))
    distributed.cleanup()


def test_two_gloo_ranks_share_the_queue_and_match_one_process(tiny_cfg, tmp_path):
    """Zero LoRA LR makes every batch rank-independent; global SGD averages gradients over ranks.

    The pause depends on the number of ranks (each finishes its in-flight batch), so the one-process
    reference is the static schedule over 2 virtual ranks: it pauses where two ranks do, after the second
    queue batch (one rank alone pauses after the first), and splits global SGD's sequences as they do."""
    import torch.multiprocessing as mp

    cfg = _gloo_cfg(tiny_cfg)
    val = synthetic_val(DOC_TARGETS, cfg.model.vocab_size, seed=2)
    ref = run_ttt(fresh_model(cfg), val, cfg.replace({"ttt.schedule": "static", "ttt.virtual_ranks": 2}))
    assert ref.num_global_phases == 1
    mp.spawn(_gloo_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        nats, nbytes, ntok = got["own"]
        assert ntok == val.num_targets and nbytes == ref.own.sum_bytes
        assert nats == pytest.approx(ref.own.sum_nats, rel=1e-5)
        assert (got["counts"] == 1).all() and got["coverage"] == val.num_targets


def test_prepared_data_every_target_and_byte_counted(tiny_cfg, tiny_data):
    from pgolf.data import load_val

    val = load_val(tiny_data, val_docs_limit=6)
    cfg = small_cfg(tiny_cfg, peer_mode="causal", peer_k=2, phased_prefix_docs=2, global_chunk_tokens=64,
                    eval_seq_len=32, chunk_size=16, short_chunk_steps=[[32, 8]])
    res = run_ttt(fresh_model(cfg), val, cfg, dump=True)
    assert res.own.num_tokens == res.ensemble.num_tokens == val.num_targets
    assert res.own.sum_bytes == res.ensemble.sum_bytes == float(val.token_bytes[1:].sum()) > 0
    assert (res.score_counts == 1).all() and res.num_global_phases == 1


@pytest.mark.gpu
def test_compiled_bf16_matches_eager_fp32_on_gpu(tiny_cfg):
    """The CUDA fast path (torch.compile + bf16 autocast, compile warmup on random tokens) vs the CPU reference."""
    cfg = small_cfg(tiny_cfg, peer_mode="causal", peer_k=2, phased_prefix_docs=3, global_chunk_tokens=16)
    val = synthetic_val(DOC_TARGETS, cfg.model.vocab_size, seed=2)
    ref = run_ttt(fresh_model(cfg), val, cfg)
    fast_cfg = cfg.replace({"train.compile": "on"})
    fast = run_ttt(fresh_model(cfg).cuda(), val, fast_cfg)
    assert "compile_warmup_s" in fast.phase_seconds
    assert fast.own.num_tokens == ref.own.num_tokens
    assert fast.own.bpb() == pytest.approx(ref.own.bpb(), rel=2e-2)
    assert fast.ensemble.bpb() == pytest.approx(ref.ensemble.bpb(), rel=2e-2)
