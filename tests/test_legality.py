"""The challenge's validity conditions (issue #1017) as perturbation, normalization and trace tests.

C1 strict causality: the score of a target depends only on the artifact and the tokens before it
(within a document) and on documents ordered before it (across documents; the order is the TTT
queue: batches in queue order, rows within a batch are independent).
C2 normalization: the scored distribution is a full distribution over the vocabulary.
C3 score before update: no update that uses target t happens before t's score is committed.
C4 single pass: every target is scored exactly once.
#2139's ensemble (peer_mode pr2139) is run too, and the C1/C4 tests must *detect* its violations.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from pgolf.model import GPT
from pgolf.ttt.ensemble import blend_nll, blended_distribution, max_entropy_nats
from pgolf.ttt.lora import BatchedLoRA
from pgolf.synthetic import synthetic_val
from pgolf.ttt.score_first import build_queue, run_ttt
from pgolf.ttt.windows import entropy_nats
from test_ttt_score_first import DOC_TARGETS, fresh_model, small_cfg

MODES = {"off": {}, "causal": {"peer_mode": "causal", "peer_k": 3, "peer_conf_threshold": 0.0},
         "pr2139": {"peer_mode": "pr2139", "peer_k": 2, "peer_conf_threshold": 0.0, "batch_size": 2}}


def _val(vocab, perturb_at: int | None = None):
    val = synthetic_val(DOC_TARGETS, vocab, seed=2)
    if perturb_at is not None:
        old = int(val.tokens[perturb_at])
        assert old != 1
        val.tokens[perturb_at] = 2 + (old - 1) % (vocab - 2)  # another non-BOS token
    return val


def _run(tiny_cfg, val, mode, trace=None, **extra):
    cfg = small_cfg(tiny_cfg, **{**MODES[mode], **extra})
    return run_ttt(fresh_model(cfg), val, cfg, trace=trace, dump=True)


def _doc_slice(doc):
    """Indices into the dump arrays (target position - 1) of a (start, length) doc's targets."""
    start, length = doc
    return slice(start, start + length - 1)


# --------------------------------------------------------------------------- C1


@pytest.mark.parametrize("mode", list(MODES))
def test_c1_a_token_changes_no_earlier_score_of_its_document(tiny_cfg, mode):
    vocab = tiny_cfg.model.vocab_size
    base_val = _val(vocab)
    doc = max(base_val.docs, key=lambda d: d[1])  # 30 targets: several chunks and a sliding window
    j = doc[0] + 13                                 # stream index of the changed token
    base = _run(tiny_cfg, base_val, mode)
    pert = _run(tiny_cfg, _val(vocab, perturb_at=j), mode)
    before = slice(doc[0], j - 1)                    # targets at stream positions doc+1 .. j-1
    after = slice(j - 1, doc[0] + doc[1] - 1)
    for name in ("nll_own", "nll_final"):
        a, b = getattr(base, name), getattr(pert, name)
        assert (a[before] == b[before]).all(), f"{mode}: {name} before the change moved"
        assert (a[after] != b[after]).any(), f"{mode}: the change had no effect (test has no power)"


def test_c1_causal_mode_documents_ordered_before_are_unchanged(tiny_cfg):
    vocab = tiny_cfg.model.vocab_size
    base_val = _val(vocab)
    queue = build_queue(base_val.docs, 3)
    assert [len(b.docs) for b in queue] == [2, 3, 3]
    p = queue[1].docs[1]                              # a doc of the middle batch
    base = _run(tiny_cfg, base_val, "causal")
    pert = _run(tiny_cfg, _val(vocab, perturb_at=p.start + 2), "causal")
    not_after = [d for b in queue[:2] for d in b.docs if d.index != p.index]
    for d in not_after:
        sl = _doc_slice((d.start, d.length))
        assert (base.nll_final[sl] == pert.nll_final[sl]).all(), f"doc {d.index} depends on doc {p.index}"
    later = [(d.start, d.length) for d in queue[2].docs]
    assert any((base.nll_final[_doc_slice(d)] != pert.nll_final[_doc_slice(d)]).any() for d in later), \
        "later documents should see the changed doc's adapter as a peer (test has no power)"


def test_c1_pr2139_mode_dependence_is_detected(tiny_cfg):
    """#2139 draws peers inside the batch: the earlier row's score depends on the later row's document."""
    vocab = tiny_cfg.model.vocab_size
    base_val = _val(vocab)
    queue = build_queue(base_val.docs, 2)
    q, p = queue[1].docs                              # q = row 0 (ordered first), p = row 1
    base = _run(tiny_cfg, base_val, "pr2139")
    pert = _run(tiny_cfg, _val(vocab, perturb_at=p.start + 2), "pr2139")
    sl = _doc_slice((q.start, q.length))
    assert (base.nll_own[sl] == pert.nll_own[sl]).all()     # its own pass is causal ...
    assert (base.nll_final[sl] != pert.nll_final[sl]).any()  # ... the reported blend is not
    assert not base.compliant


# --------------------------------------------------------------------------- C2


@pytest.mark.parametrize("threshold", [0.0, 6.0, max_entropy_nats(512) + 1])
def test_c2_blended_distribution_sums_to_one_over_the_vocabulary(tiny_cfg, threshold):
    model = GPT(tiny_cfg.model).eval()
    model.set_looping(True)
    own = BatchedLoRA(tiny_cfg.model, tiny_cfg.ttt, 1, model.num_slots, generator=torch.Generator().manual_seed(1))
    peers = BatchedLoRA(tiny_cfg.model, tiny_cfg.ttt, 3, model.num_slots, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for lora, s in ((own, 4.0), (peers, 2.0)):
            for b in lora.b.values():
                b.copy_(torch.randn(b.shape, generator=g) * s)
        x = torch.randint(2, tiny_cfg.model.vocab_size, (1, 24), generator=g)
        own_logits = model(x, adapters=own)[0]
        frozen = peers.snapshot()
        frozen.peer_index = torch.tensor([0, 1, 2])
        peer_logits = model(x.expand(3, -1), adapters=frozen)              # [3, T, V]
    for t in torch.randperm(23, generator=g)[:8].tolist():
        p = blended_distribution(own_logits[t], peer_logits[:, t], threshold, 0.8)
        assert p.shape == (tiny_cfg.model.vocab_size,) and float(p.min()) >= 0
        assert abs(float(p.sum()) - 1.0) < 1e-5
        target = int(x[0, t + 1])
        logp = torch.log_softmax(own_logits[t], -1)
        committed, _ = blend_nll(-logp[target][None], torch.softmax(peer_logits[:, t], -1)[:, target].mean()[None],
                                 entropy_nats(logp)[None], threshold, 0.8)
        assert float(committed[0]) == pytest.approx(-math.log(float(p[target])), rel=1e-5, abs=1e-6)


# --------------------------------------------------------------------------- C3


def score_before_update_violations(trace) -> list[tuple]:
    """Updates that use a target position whose score was not yet committed."""
    scored: set[int] = set()
    bad = []
    for event in trace:
        if event[0] == "score":
            scored.add(event[2])
        else:
            bad.extend((event[1], pos) for pos in event[2] if pos not in scored)
    return bad


def test_c3_checker_catches_an_update_before_its_score():
    assert score_before_update_violations([("score", 0, 1), ("update", 0, (1,))]) == []
    assert score_before_update_violations([("update", 0, (1, 2)), ("score", 0, 1), ("score", 0, 2)]) == \
        [(0, 1), (0, 2)]


@pytest.mark.parametrize("mode", list(MODES))
def test_c3_every_update_comes_after_the_scores_it_uses(tiny_cfg, mode):
    trace: list = []
    val = _val(tiny_cfg.model.vocab_size)
    _run(tiny_cfg, val, mode, trace=trace, phased_prefix_docs=3, global_chunk_tokens=16, grad_steps=2)
    kinds = Counter(e[0] for e in trace)
    assert kinds["update"] > 10 and kinds["score"] >= val.num_targets
    assert score_before_update_violations(trace) == []
    # The last chunk of a document is never trained on by its adapter.
    last_targets = {d[0] + d[1] - 1 for d in val.docs}
    per_doc = [e for e in trace if e[0] == "update" and len(e[2]) < val.docs[e[1]][1] - 1]
    assert not any(last in e[2] for e in per_doc for last in last_targets)


# --------------------------------------------------------------------------- C4


@pytest.mark.parametrize("mode", ["off", "causal"])
def test_c4_every_target_scored_exactly_once(tiny_cfg, mode):
    trace: list = []
    val = _val(tiny_cfg.model.vocab_size)
    res = _run(tiny_cfg, val, mode, trace=trace)
    counts = Counter(e[2] for e in trace if e[0] == "score")
    assert sorted(counts) == list(range(1, val.num_targets + 1)) and set(counts.values()) == {1}
    assert (res.score_counts == 1).all()
    assert res.coverage_tokens == res.target_tokens == val.num_targets == res.own.num_tokens


def test_c4_pr2139_mode_second_pass_is_detected(tiny_cfg):
    trace: list = []
    val = _val(tiny_cfg.model.vocab_size)
    res = _run(tiny_cfg, val, "pr2139", trace=trace)
    counts = Counter(e[2] for e in trace if e[0] == "score")
    assert max(counts.values()) == 2 and (res.score_counts == 2).sum() == res.coverage_tokens > 0


# --------------------------------------------------------------------------- identities


def test_fresh_lora_and_single_member_ensemble_change_nothing(tiny_cfg):
    model = GPT(tiny_cfg.model).eval()
    x = torch.randint(2, tiny_cfg.model.vocab_size, (2, 10))
    with torch.no_grad():
        assert torch.equal(model(x), model(x, adapters=BatchedLoRA(tiny_cfg.model, tiny_cfg.ttt, 2, model.num_slots)))
    val = _val(tiny_cfg.model.vocab_size)
    off = _run(tiny_cfg, val, "off")
    k1 = _run(tiny_cfg, val, "causal", peer_k=1)
    assert (k1.nll_final == off.nll_own).all() and k1.ensemble.sum_nats == off.own.sum_nats
