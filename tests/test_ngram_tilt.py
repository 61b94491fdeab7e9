"""The token-only n-gram tilt: exactness against a pure-Python reference, the tilt's algebra, and C1-C4.

C1: perturbing a token moves no hint (and no tilted score) of a target scored before it; an
insert-before-lookup variant and the `stream` order under pgolf's scoring order are detected.
C2: the tilted distribution sums to 1 over the full vocabulary, on a model's logits.
C3: `causal` statistics follow the order score-first TTT commits its scores, each count after its score.
C4: every target is scored once, tilted or not, and the tilt never reaches training.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pgolf.config import flatten, load_preset
from pgolf.data import ValData, find_docs
from pgolf.model import GPT
from pgolf.ngram_orders import hints
from pgolf.ngram_tilt import NgramTilt, causal_hints, tilt_nll, ttt_order
from pgolf.synthetic import synthetic_val
from pgolf.ttt.lora import BatchedLoRA
from pgolf.ttt.score_first import run_ttt
from pgolf.ttt.windows import build_queue

sys.path.insert(0, str(Path(__file__).parent))
from ngram_reference import reference_hints  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "pr2135_config.json"


def repetitive_stream(n: int, seed: int = 0, vocab: int = 40) -> np.ndarray:
    """BOS-separated documents of random tokens, half of them copying an earlier span (contexts recur)."""
    rng = np.random.default_rng(seed)
    out = [1]
    while len(out) < n:
        length = int(rng.integers(3, 300))
        if rng.random() < 0.5 and len(out) > 100:
            s = int(rng.integers(1, len(out) - 50))
            out += [t if t != 1 else 2 for t in out[s:s + length]]
        else:
            out += rng.integers(2, vocab, length).tolist()
        out.append(1)
    out = np.asarray(out[:n], np.int64)
    out[-1] = 1
    return out


def as_tuple(h):
    return h.top_tok.tolist(), h.top_count.tolist(), h.total.tolist(), h.gate.tolist()


def docs_of(tokens: np.ndarray) -> list[tuple[int, int]]:
    bos = np.flatnonzero(tokens == 1)
    return [(int(a), int(b - a + 1)) for a, b in zip(bos[:-1], bos[1:])]


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("order", ["stream", "causal"])
def test_fast_statistics_equal_the_reference_on_50k_tokens(order):
    tokens = repetitive_stream(50_000)
    upd = None
    if order == "causal":  # the order score-first TTT scores in: queue batches, chunks, rows
        cfg = load_preset("tiny").ttt
        upd = ttt_order(build_queue(docs_of(tokens), cfg.batch_size), cfg, tokens.size - 1)
    fast = hints(tokens, order, update_order=upd, verify=True)
    ref = reference_hints(tokens, order, update_order=upd)
    assert as_tuple(fast) == tuple(list(x) for x in ref)
    assert 1_000 < int(fast.gate.sum()) < 49_000  # the gate fires, but not everywhere
    assert (fast.total > 0).sum() > fast.gate.sum()  # some seen contexts stay below the threshold


def test_causal_tables_per_rank_equal_the_reference():
    tokens = repetitive_stream(50_000, seed=1)
    cfg = load_preset("tiny").ttt
    upd = ttt_order(build_queue(docs_of(tokens), cfg.batch_size), cfg, tokens.size - 1)
    groups = np.zeros(tokens.size - 1, np.int64)
    for k, (start, length) in enumerate(docs_of(tokens)):
        groups[start:start + length - 1] = k % 4  # a document's targets belong to one rank
    fast = hints(tokens, "causal", update_order=upd, groups=groups, verify=True)
    assert as_tuple(fast) == tuple(list(x) for x in reference_hints(tokens, "causal", update_order=upd, groups=groups))
    assert as_tuple(fast) != as_tuple(hints(tokens, "causal", update_order=upd))  # the ranks' tables differ


def test_ranks_never_share_a_count_of_contexts_one_token_apart():
    # Contexts (5, 6) and (5, 7) hash to h and h + 1: the rank must not shift one onto the other.
    tokens = np.array([1, 5, 6, 9, 1, 5, 7, 9, 1])
    groups = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    fast = hints(tokens, "causal", ngram=3, groups=groups, verify=True)
    assert fast.total[6] == 0 and fast.top_tok[6] == -1
    assert as_tuple(fast) == tuple(list(x) for x in reference_hints(tokens, "causal", ngram=3, groups=groups))


def test_stream_ring_is_seeded_with_the_first_target():
    # Target 14's context is [T1, T1, T2 .. T14]; that context recurs later, followed by 99.
    head = list(range(10, 25))                # T1 .. T15
    tokens = np.array([1] + head + [1] + [head[0]] + head[:14] + [99, 1])
    fast, ref = hints(tokens, "stream", verify=True), reference_hints(tokens, "stream")
    later = 31                                 # T17 .. T31 = [T1, T1, T2 .. T14] again; it predicts 99
    assert fast.total[later] == 1 and fast.top_tok[later] == tokens[15] and fast.gate[later]
    assert as_tuple(fast) == tuple(list(x) for x in ref)
    assert not fast.gate[:14].any() and fast.total[:14].sum() == 0


def test_causal_contexts_never_cross_a_bos():
    doc = list(range(10, 40))
    tokens = np.array([1] + doc + [1] + doc + [1])
    h = hints(tokens, "causal")
    second = len(doc) + 1                      # target index of the second document's BOS
    # The first 14 targets of a document have no full in-document context; later ones repeat the first doc.
    assert h.total[second:second + 14].sum() == 0
    assert h.gate[second + 14:second + len(doc)].all()
    stream = hints(tokens, "stream")
    assert stream.gate[second:second + 14].sum() == 0 and stream.gate[second + 15:second + len(doc)].all()


def test_ties_keep_the_older_token_and_the_gate_has_no_minimum_count():
    # Context (5, 6) is followed by 8, then 7, then queried at target 8: a 1:1 tie keeps 8 (the older).
    tokens = np.array([1, 5, 6, 8, 5, 6, 7, 5, 6, 9, 1])
    h = hints(tokens, "stream", ngram=3, threshold=0.5)
    assert (h.top_tok[8], h.top_count[8], h.total[8], h.gate[8]) == (8, 1, 2, True)
    assert not hints(tokens, "stream", ngram=3, threshold=0.8).gate[8]
    # Seen once before is enough: the second query of (5, 6) fires with share 1.
    assert (h.top_tok[5], h.total[5], h.gate[5]) == (8, 1, True)
    assert h.hint[5] == 8 and h.hint[2] == -1


# --------------------------------------------------------------------------- C2 and the formula


def test_c2_tilted_distribution_sums_to_one_over_the_full_vocabulary():
    cfg = load_preset("tiny").model.__class__(**{**load_preset("tiny").model.__dict__, "vocab_size": 8192})
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    with torch.no_grad():  # trained-looking logits: scale the head so the softmax is far from uniform
        model.tok_emb.weight.mul_(200.0)
        x = torch.randint(2, 8192, (1, 64))
        z = model(x)[0].double()  # softcapped fp64 logits [64, 8192]
    logp = torch.log_softmax(z, -1)
    beta = 2.625
    g = torch.Generator().manual_seed(1)
    for t in range(0, 64, 4):
        for h, y in ((int(torch.randint(0, 8192, (1,), generator=g)), int(x[0, (t + 1) % 64])),
                     (int(logp[t].argmax()), int(logp[t].argmax()))):
            tilted = torch.softmax(z[t] + beta * torch.nn.functional.one_hot(torch.tensor(h), 8192), -1)
            assert abs(float(tilted.sum()) - 1.0) < 1e-6
            closed = tilt_nll(-logp[t, y], logp[t, h], torch.tensor(h == y), torch.tensor(True), beta)
            assert abs(float(closed) + math.log(float(tilted[y]))) < 1e-4
            # Without the normaliser the "distribution" does not sum to 1 (visible when q is not tiny).
            if h == int(logp[t].argmax()):
                assert float(logp[t, h].exp()) > 0.01
                assert abs(float((logp[t].exp() * torch.exp(beta * (torch.arange(8192) == h))).sum()) - 1.0) > 1e-3
    nll = torch.tensor([1.0, 2.0])
    assert torch.equal(tilt_nll(nll, torch.tensor([-0.1, -3.0]), torch.tensor([True, False]),
                                torch.tensor([False, False]), beta), nll)  # no gate: untouched


# --------------------------------------------------------------------------- C1


def _scored_before(order: np.ndarray, target: int) -> np.ndarray:
    """Targets committed at or before `target` in the scoring order `order`."""
    return order[:int(np.flatnonzero(order == target)[0]) + 1]


def test_the_tilt_builds_either_order_from_the_config():
    """`NgramTilt.build` takes `causal_hints` for causal and imports `ngram_orders` by name for stream."""
    tokens = repetitive_stream(5_000, seed=7)
    for order in ("causal", "stream"):
        tilt = NgramTilt.build(tilt_cfg(order).eval, torch.from_numpy(tokens))
        want = hints(tokens, order, ngram=4, verify=True)
        assert np.array_equal(tilt.hint.numpy(), want.hint) and tilt.gated == int(want.gate.sum()) > 0
    assert as_tuple(causal_hints(tokens, ngram=4)) == as_tuple(hints(tokens, "causal", ngram=4))


def test_c1_a_token_moves_no_hint_scored_before_it():
    tokens = repetitive_stream(20_000, seed=3)
    cfg = load_preset("tiny").ttt
    order = ttt_order(build_queue(docs_of(tokens), cfg.batch_size), cfg, tokens.size - 1)
    rng = np.random.default_rng(0)
    base_stream, base_causal = hints(tokens, "stream"), hints(tokens, "causal", update_order=order)
    stream_violations = 0
    for j in rng.choice(np.flatnonzero(tokens[1:] != 1) + 1, 30, replace=False):
        pert = tokens.copy()
        pert[j] = 2 + (pert[j] - 1) % 38  # another non-BOS token: the documents (and the queue) stay
        before = _scored_before(order, j - 1)  # target j-1 reads token j; everything scored up to it
        causal = hints(pert, "causal", update_order=order)
        assert np.array_equal(causal.hint[before], base_causal.hint[before])
        stream = hints(pert, "stream")
        assert np.array_equal(stream.hint[:j], base_stream.hint[:j])  # causal in stream order only
        stream_violations += not np.array_equal(stream.hint[before], base_stream.hint[before])
    assert stream_violations > 0  # under pgolf's scoring order the `stream` statistics are not causal


def test_c1_detects_an_insert_before_lookup_variant():
    tokens = repetitive_stream(3_000, seed=4)
    moved = {False: 0, True: 0}
    for j in np.flatnonzero(tokens[1:] != 1)[1000:1400:20] + 1:
        pert = tokens.copy()
        pert[j] = 2 + (pert[j] - 1) % 38
        for cheat in (False, True):
            a = reference_hints(tokens, "stream", insert_first=cheat)
            b = reference_hints(pert, "stream", insert_first=cheat)
            moved[cheat] += any(x[:j] != y[:j] for x, y in zip(a, b))
    # Legal: nothing up to target j-1 reads token j. Cheating: target j-1's statistics count token j.
    assert moved[False] == 0 and moved[True] > 0


def tilt_cfg(order="causal", **ttt):
    cfg = load_preset("tiny")
    base = {"ttt.batch_size": 3, "ttt.chunk_size": 8, "ttt.short_chunk_steps": [[8, 2], [16, 4]],
            "ttt.eval_seq_len": 16, "ttt.lora_lr": 0.01, "ttt.phased_prefix_docs": 0, "ttt.peer_mode": "off",
            "eval.ngram_tilt": order, "eval.ngram_order": 4}
    base.update({f"ttt.{k}": v for k, v in ttt.items()})
    return cfg.replace(base)


def model_for(cfg):
    torch.manual_seed(0)
    return GPT(cfg.model).eval()


def test_c1_run_ttt_tilted_scores_before_a_perturbed_token_do_not_move():
    cfg = tilt_cfg(phased_prefix_docs=3, global_chunk_tokens=16)
    val = synthetic_val([30, 12, 40, 9, 25, 33], cfg.model.vocab_size, seed=1, period=5)
    trace: list = []
    base = run_ttt(model_for(cfg), val, cfg, trace=trace, dump=True)
    scored = [p for e, _, p in (x for x in trace if x[0] == "score")]  # stream positions, scoring order
    j = val.docs[2][0] + 20  # a token in the middle of the 40-token document
    pert_tokens = val.tokens.clone()
    pert_tokens[j] = 2 + (int(pert_tokens[j]) - 1) % 100
    pert = run_ttt(model_for(cfg), type(val)(tokens=pert_tokens, token_bytes=val.token_bytes, docs=val.docs),
                   cfg, dump=True)
    # Targets committed before token j's own score (its score is -log p'(T[j]) and must move).
    before = np.array(scored[:scored.index(j)]) - 1
    assert np.array_equal(base.nll_final[before], pert.nll_final[before])
    assert not np.array_equal(base.nll_final, pert.nll_final)
    assert base.ngram["ngram_hits"] > 0


# --------------------------------------------------------------------------- C3 and C4


def shared_val(n: int, seed: int):
    """Documents that copy spans of each other (so statistics cross documents), as a `ValData`."""
    tokens = torch.from_numpy(repetitive_stream(n, seed=seed))
    return ValData(tokens=tokens, token_bytes=(tokens != 1).to(torch.int32), docs=find_docs(tokens))


def test_c3_causal_statistics_follow_the_ttt_scoring_order():
    cfg = tilt_cfg()
    val = shared_val(600, seed=2)
    trace: list = []
    run_ttt(model_for(cfg), val, cfg, trace=trace)
    scored = np.array([p for e, _, p in (x for x in trace if x[0] == "score")]) - 1
    queue = build_queue(val.docs, cfg.ttt.batch_size)
    order = ttt_order(queue, cfg.ttt, val.num_targets)
    assert np.array_equal(scored, order)  # the tilt's update order is the order scores are committed
    events: list = []
    ref = reference_hints(val.tokens.numpy(), "causal", ngram=4, update_order=scored, events=events)
    fast = hints(val.tokens, "causal", ngram=4, update_order=order)
    assert as_tuple(fast) == tuple(list(x) for x in ref)
    # Every count is added after the query (score) of its own target, and before any later query.
    at = {e: k for k, e in enumerate(events)}
    assert all(at[("update", i)] > at[("query", i)] for i in scored if ("update", i) in at)
    assert sum(fast.total > 0) > 0
    # The stream order is not this one: its statistics differ from the online run in scoring order.
    assert as_tuple(hints(val.tokens, "stream", ngram=4)) != as_tuple(fast)
    cheat: list = []
    reference_hints(val.tokens.numpy(), "causal", ngram=4, update_order=scored, events=cheat, insert_first=True)
    at = {e: k for k, e in enumerate(cheat)}
    assert not all(at[("update", i)] > at[("query", i)] for i in scored if ("update", i) in at)


def test_c4_each_target_scored_once_and_the_tilt_never_trains():
    cfg_on, cfg_off = tilt_cfg(), tilt_cfg("off")
    val = synthetic_val([30, 12, 40, 9, 25, 33, 17], cfg_on.model.vocab_size, seed=5, period=4)
    on = run_ttt(model_for(cfg_on), val, cfg_on, dump=True)
    off = run_ttt(model_for(cfg_off), val, cfg_off, dump=True)
    assert (on.score_counts == 1).all() and on.score_counts.size == val.num_targets
    assert on.ngram["ngram_scored"] == val.num_targets
    h = NgramTilt.for_ttt(cfg_on, val.tokens, build_queue(val.docs, cfg_on.ttt.batch_size)).hint.numpy()
    gated = h >= 0
    assert 0 < gated.sum() < val.num_targets
    # Ungated targets score exactly as without the tilt: the adapters trained on the same (untilted) loss.
    assert np.array_equal(on.nll_final[~gated], off.nll_final[~gated])
    assert not np.array_equal(on.nll_final[gated], off.nll_final[gated])
    assert on.ngram["ngram_nats_untilted"] == pytest.approx(float(off.nll_final.astype(np.float64).sum()), rel=1e-6)


# --------------------------------------------------------------------------- the pr2135 preset


def test_pr2135_preset_matches_the_logged_configuration():
    want = json.loads(FIXTURE.read_text())
    want.pop("_doc")
    got = flatten(load_preset("pr2135").to_dict())
    assert {k: got[k] for k in want} == want
    cfg = load_preset("pr2135")
    assert cfg.ttt.lora_sites == ("q", "v", "o", "mlp") and cfg.eval.ngram_tilt == "causal"
    assert cfg.ttt.peer_mode == "off"
    # One calibration batch is a rank's micro-batch: 786,432 / 8 ranks = 48 windows of 2,048 tokens.
    assert cfg.train.train_batch_tokens // 8 // cfg.quant.calibration_seq_len == 48


def test_preset_show_prints_the_resolved_config(capsys):
    from pgolf.app.cli import main
    assert main(["preset", "show", "pr2135", "--set", "eval.ngram_tilt=stream"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == json.loads(load_preset("pr2135", {"eval.ngram_tilt": "stream"}).to_json())
    assert shown["eval"]["ngram_tilt"] == "stream" and shown["model"]["smear_gate_bos_fix"] is False
    assert main(["preset", "show", "pr2153"]) == 2  # one line, exit 2, naming the close preset
    assert "did you mean pr2135" in capsys.readouterr().err


def test_2135s_environment_knobs_map_to_the_new_fields():
    from pgolf.app.envknobs import env_overrides
    env = {"SMEAR_GATE_BOS_FIX": "0", "TTT_K_LORA": "0", "TTT_Q_LORA": "1", "TTT_V_LORA": "1",
           "NGRAM_TILT_ENABLED": "1", "TOKEN_ORDER": "16", "TOKEN_THRESHOLD": "0.8", "TOKEN_BOOST": "2.625"}
    got = env_overrides(env, load_preset("record"))
    assert got == {"model.smear_gate_bos_fix": False, "ttt.mask": "no_k", "eval.ngram_tilt": "causal",
                   "eval.ngram_order": 16, "eval.ngram_threshold": 0.8, "eval.ngram_beta": 2.625}


def test_pr2135_parameter_counts():
    cfg = load_preset("pr2135")
    with torch.device("meta"):
        model = GPT(cfg.model)
        lora = BatchedLoRA(cfg.model, cfg.ttt, 1, model.num_slots)
    assert sum(p.numel() for p in model.parameters()) == 35_945_673
    assert lora.num_params_per_doc() == 5_918_720  # head 696,320 + 17 x (Q, V, O, MLP)


def test_seed_and_record_keep_the_tilt_off_and_the_bos_fix_on():
    for name in ("seed", "record", "cpu"):
        cfg = load_preset(name)
        assert cfg.eval.ngram_tilt == "off" and cfg.model.smear_gate_bos_fix and "k" in cfg.ttt.lora_sites


def test_the_tilt_refuses_a_peer_ensemble():
    from pgolf.errors import ConfigError
    with pytest.raises(ConfigError, match="ngram_tilt"):
        load_preset("seed", {"eval.ngram_tilt": "causal"})


# --------------------------------------------------------------------------- audit


def test_audit_flags_the_stream_order_and_passes_causal(tmp_path):
    from pgolf.submission.audit import FAIL, PASS, audit_paths
    from test_audit import make_run

    def status(run):
        return [(c.status, c.detail) for c in audit_paths([run]) if c.name == "legality.ngram_tilt"]

    stream = make_run(tmp_path, "stream", config_set={"eval.ngram_tilt": "stream", "ttt.peer_mode": "off"})
    [(st, why)] = status(stream)
    assert st == FAIL and "not yet scored" in why and "causal" in why
    causal = make_run(tmp_path, "causal", config_set={"eval.ngram_tilt": "causal", "ttt.peer_mode": "off"})
    assert status(causal) == [(PASS, "ngram_tilt=causal")]


def test_packed_eval_tilts_only_the_scored_number():
    from pgolf.evaluate import eval_packed
    cfg = tilt_cfg()
    val = shared_val(800, seed=6)
    model = model_for(cfg)
    plain = eval_packed(model, val, cfg.eval)
    tilt = NgramTilt.build(cfg.eval, val.tokens)
    tilted = eval_packed(model, val, cfg.eval, tilt=tilt)
    g = tilt.figures()
    assert g["ngram_scored"] == val.num_targets and tilt.gated > 0
    assert g["ngram_nats_untilted"] == pytest.approx(plain.sum_nats, rel=1e-5)
    assert tilted.sum_nats == pytest.approx(g["ngram_nats_tilted"], rel=1e-6) and tilted.sum_nats != plain.sum_nats
    assert tilted.num_tokens == plain.num_tokens == val.num_targets


def test_eval_verb_reports_tilted_and_untilted_figures(tiny_data, tmp_path_factory, capsys):
    from pgolf.app.cli import main
    from test_eval_cli import read_report, run_dir as make_eval_run

    run = make_eval_run.__wrapped__(tiny_data, tmp_path_factory)
    assert main(["eval", str(run)]) == 0
    plain = read_report(run)["val_bpb_roundtrip"]
    tilt = ["--set", "ttt.peer_mode=off", "--set", "eval.ngram_tilt=causal", "--set", "eval.ngram_order=3"]
    assert main(["eval", str(run), *tilt]) == 0
    rep = read_report(run)
    assert rep["val_bpb_roundtrip"] == pytest.approx(plain, rel=1e-5)  # the untilted figure keeps its key
    assert rep["ngram"]["ngram_tilt"] == "causal" and rep["ngram"]["val_bpb_tilted"] != rep["val_bpb_roundtrip"]
    assert main(["eval", str(run), "--ttt", *tilt]) == 0
    rep = read_report(run)
    assert rep["ngram"]["ngram_scored"] == rep["target_tokens"] and rep["val_bpb_ttt_untilted"] != rep["val_bpb_ttt"]
    assert "ngram_tilt:causal gated:" in capsys.readouterr().out
