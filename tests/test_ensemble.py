"""Peer ensemble: peer draws, the pool of finished adapters, the blend, and both modes end to end."""

from __future__ import annotations

import math

import pytest
import torch

from pgolf.ttt.causal_ensemble import PeerPool, causal_peer_ids
from pgolf.ttt.ensemble import blend_nll, blended_distribution, max_entropy_nats
from pgolf.ttt.pr2139_ensemble import pr2139_block_spans, pr2139_peer_ids
from pgolf.ttt.lora import FrozenLoRA
from pgolf.synthetic import synthetic_val
from pgolf.ttt.score_first import build_queue, run_ttt
from test_ttt_score_first import DOC_TARGETS, fresh_model, small_cfg


def test_pr2139_peer_draw_follows_2139():
    ids = pr2139_peer_ids(bsz=6, k=4, peer_seed=42, batch_idx=7)
    assert ids.shape == (6, 3)
    g = torch.Generator().manual_seed(42 * 1013 + 7)
    for row in range(6):
        others = [i for i in range(6) if i != row]
        expect = [others[j] for j in torch.randperm(5, generator=g)[:3].tolist()]
        assert ids[row].tolist() == expect
        assert row not in expect and len(set(expect)) == 3
    assert torch.equal(ids, pr2139_peer_ids(6, 4, 42, 7))
    assert not torch.equal(ids, pr2139_peer_ids(6, 4, 42, 8))
    big = pr2139_peer_ids(2, 2, 2**31, 5)  # the seed is masked to 31 bits
    assert torch.equal(big, pr2139_peer_ids(2, 2, 0, 5))


def test_causal_peer_draw_stays_in_the_pool():
    ids = causal_peer_ids(num_rows=5, pool_size=3, k=4, peer_seed=1, batch_idx=0)
    assert ids.shape == (5, 3) and int(ids.max()) < 3
    assert all(len(set(r.tolist())) == 3 for r in ids)
    assert causal_peer_ids(4, 1, 4, 1, 0).shape == (4, 1)  # fewer finished docs than K-1: use them all


def _snap(num_docs, fill):
    return FrozenLoRA({"head": torch.full((num_docs, 1, 2), float(fill))},
                      {"head": torch.zeros(num_docs, 3, 1)}, 1.0)


def test_peer_pool_keeps_the_newest_snapshots_with_enough_docs():
    pool = PeerPool(k=4)
    assert pool.adapters() is None and pool.num_docs == 0
    pool.add(_snap(2, 0))
    assert pool.num_docs == 2
    pool.add(_snap(1, 1))  # 1 doc < K-1: keep the older one too
    assert pool.num_docs == 3
    assert pool.adapters().a["head"][:, 0, 0].tolist() == [1, 0, 0]
    pool.add(_snap(5, 2))
    assert pool.num_docs == 5
    pool.clear()
    assert pool.adapters() is None
    one = PeerPool(k=1)
    one.add(_snap(3, 0))
    assert one.num_docs == 0


def test_pr2139_block_spans_do_not_overlap():
    assert pr2139_block_spans(7, 3) == [(0, 0, 3), (3, 3, 6), (6, 6, 7)]


def test_blend_routes_on_own_entropy_only():
    nll_own = torch.tensor([0.1, 2.0, 3.0])
    peer = torch.tensor([0.5, 0.5, 0.01])
    ent = torch.tensor([0.2, 0.7, 5.0])
    final, routed = blend_nll(nll_own, peer, ent, threshold=0.5, blend_w=0.8)
    assert routed.tolist() == [False, True, True]
    assert final[0] == nll_own[0]
    for i in (1, 2):
        expect = -math.log(0.8 * math.exp(-float(nll_own[i])) + 0.2 * float(peer[i]))
        assert float(final[i]) == pytest.approx(expect, rel=1e-6)
    same, none = blend_nll(nll_own, peer, ent, threshold=max_entropy_nats(512) + 1e-3, blend_w=0.8)
    assert torch.equal(same, nll_own) and not none.any()
    w1, _ = blend_nll(nll_own, peer, ent, threshold=0.0, blend_w=1.0)
    torch.testing.assert_close(w1, nll_own)


def test_blended_distribution_is_normalized_and_matches_the_scalar_blend():
    g = torch.Generator().manual_seed(0)
    own = torch.randn(512, generator=g)
    peers = torch.randn(3, 512, generator=g) * 2
    p = blended_distribution(own, peers, threshold=0.0, blend_w=0.8)
    assert abs(float(p.sum()) - 1) < 1e-12 and float(p.min()) >= 0
    target = 17
    nll_own = -torch.log_softmax(own.double(), -1)[target]
    peer_mean = torch.softmax(peers.double(), -1)[:, target].mean()
    ent = -(torch.softmax(own.double(), -1) * torch.log_softmax(own.double(), -1)).sum()
    final, routed = blend_nll(nll_own[None], peer_mean[None], ent[None], 0.0, 0.8)
    assert bool(routed[0]) and float(final[0]) == pytest.approx(-math.log(float(p[target])), rel=1e-12)
    sharp = torch.full((512,), -30.0)
    sharp[3] = 30.0  # entropy ~ 0 < threshold: the own distribution alone
    assert torch.equal(blended_distribution(sharp, peers, 0.5, 0.8), torch.softmax(sharp.double(), -1))


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def val():
    from pgolf.config import load_preset

    return synthetic_val(DOC_TARGETS, load_preset("tiny").model.vocab_size, seed=2)


def _run(tiny_cfg, val, **ttt):
    cfg = small_cfg(tiny_cfg, **ttt)
    return run_ttt(fresh_model(cfg), val, cfg, dump=True)


@pytest.mark.parametrize("mode", ["causal", "pr2139"])
def test_k1_or_high_threshold_reproduces_own_only_exactly(tiny_cfg, val, mode):
    off = _run(tiny_cfg, val)
    for kw in ({"peer_k": 1}, {"peer_k": 3, "peer_conf_threshold": max_entropy_nats(512) + 0.01}):
        res = _run(tiny_cfg, val, peer_mode=mode, **kw)
        assert (res.nll_final == off.nll_own).all() and (res.nll_own == off.nll_own).all()
        assert res.own.sum_nats == off.own.sum_nats and res.routed_tokens == 0
        if mode == "causal":
            assert res.ensemble.sum_nats == off.own.sum_nats and res.coverage_tokens == val.num_targets
        elif kw == {"peer_k": 1}:  # #2139 reports the own-only score when no batch is covered
            assert res.ensemble.bpb() == off.own.bpb() and res.coverage_tokens == 0


def test_causal_blends_after_the_first_batch_with_full_coverage(tiny_cfg, val):
    res = _run(tiny_cfg, val, peer_mode="causal", peer_k=3, peer_conf_threshold=0.0)
    off = _run(tiny_cfg, val)
    assert res.compliant and res.coverage_tokens == res.target_tokens == val.num_targets
    assert (res.nll_own == off.nll_own).all()  # the own pass is the same TTT
    queue = build_queue(val.docs, 3)
    first = [d for d in queue[0].docs]
    for d in first:  # nothing finished before the first batch started: own-only
        sl = slice(d.start, d.start + d.pred_len)
        assert (res.nll_final[sl] == res.nll_own[sl]).all()
    later = sum(d.pred_len for b in queue[1:] for d in b.docs)
    assert res.routed_tokens == later and res.route_fraction == pytest.approx(later / val.num_targets)
    assert (res.nll_final != res.nll_own).sum() > 0.9 * later
    assert res.ensemble.num_tokens == val.num_targets
    assert res.ensemble.sum_nats == pytest.approx(res.nll_final.sum(), rel=1e-9)


def test_pr2139_mode_is_flagged_and_excludes_small_batches(tiny_cfg, val):
    res = _run(tiny_cfg, val, peer_mode="pr2139", peer_k=3, peer_conf_threshold=0.0)
    assert not res.compliant and res.headline() == ("own", res.own)
    queue = build_queue(val.docs, 3)
    covered = sum(d.pred_len for b in queue if len(b.docs) >= 3 for d in b.docs)
    assert covered < val.num_targets  # the 2-doc batch is silently dropped by #2139; reported here
    assert res.coverage_tokens == covered == res.ensemble.num_tokens == res.routed_tokens
    assert res.own.num_tokens == val.num_targets


# --------------------------------------------------------------------------- the interface


def test_every_configured_mode_has_an_ensemble_class():
    from pgolf.config import TTTConfig
    from pgolf.errors import ConfigError
    from pgolf.ttt.peer_modes import PEER_MODES, ensemble_class, make_ensemble

    assert set(PEER_MODES) == {"off", "causal", "pr2139"}
    for mode in PEER_MODES:
        cls = ensemble_class(mode)
        ens = make_ensemble(TTTConfig(peer_mode=mode, peer_k=3), sink=None)
        assert type(ens) is cls and ens.compliant == (mode != "pr2139")
        assert ens.peers_on == (mode != "off") and ens.covers_every_target == (mode != "pr2139")
    assert not make_ensemble(TTTConfig(peer_mode="causal", peer_k=1), sink=None).peers_on
    with pytest.raises(ConfigError, match="peer_mode"):
        TTTConfig(peer_mode="both")


def test_the_old_name_of_the_pr2139_mode_still_loads():
    from pgolf.config import RunConfig, TTTConfig, load_preset

    assert TTTConfig(peer_mode="seed").peer_mode == "pr2139"
    cfg = load_preset("tiny", {"ttt.peer_mode": "seed"})
    assert cfg.ttt.peer_mode == "pr2139"
    old = cfg.to_dict()
    old["ttt"]["peer_mode"] = "seed"  # a config.json written before the rename
    assert RunConfig.from_dict(old).ttt.peer_mode == "pr2139"


def test_the_loop_module_names_no_peer_mode():
    """The score-first loop dispatches through the Ensemble interface only: no mode name appears in its code."""
    import ast
    import inspect

    from pgolf.ttt import score_first

    names = {"off", "causal", "pr2139", "seed"}
    tree = ast.parse(inspect.getsource(score_first))
    assert not [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in names]
    assert not [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Compare)
                and any(isinstance(x, ast.Attribute) and x.attr == "peer_mode" for x in ast.walk(n))]


def _meter(nats, num):
    from pgolf.bpb import BpbMeter

    m = BpbMeter()
    m.add(torch.full((num,), nats), torch.ones(num))
    return m


@pytest.mark.parametrize("compliant, peers_on, coverage, label, figure", [
    (True, False, 10, "own", "own"),              # off, or causal with K = 1
    (True, True, 10, "ensemble", "ensemble"),     # causal with peers
    (False, True, 6, "own", "ensemble"),          # pr2139: its figure is reported, never the headline
    (False, True, 0, "own", "own"),               # pr2139 with no batch of K docs: #2139 reported own-only
    (False, False, 0, "own", "own"),              # pr2139 with K = 1
])
def test_headline_is_the_compliant_score(compliant, peers_on, coverage, label, figure):
    from pgolf.ttt.score_first import TTTResult

    own, ens = _meter(1.0, 10), _meter(0.5, max(coverage, 1))
    res = TTTResult(own=own, ensemble_meter=ens, peer_mode="-", compliant=compliant, peers_on=peers_on,
                    coverage_tokens=coverage, target_tokens=10, routed_tokens=0, num_batches=1, num_global_phases=0)
    got_label, meter = res.headline()
    assert got_label == label and meter is {"own": own, "ensemble": ens}[label]
    assert res.ensemble is {"own": own, "ensemble": ens}[figure]


def test_causal_headline_is_its_full_coverage_blend(tiny_cfg, val):
    res = _run(tiny_cfg, val, peer_mode="causal", peer_k=3, peer_conf_threshold=0.0)
    assert res.headline() == ("ensemble", res.ensemble_meter) and res.ensemble is res.ensemble_meter
    assert res.ensemble_meter.num_tokens == res.target_tokens


def test_pr2139_rescore_runs_the_tested_block_spans(tiny_cfg, val, monkeypatch):
    from pgolf.ttt import pr2139_ensemble

    calls = []

    def spy(pred_len, window_tokens):
        calls.append((pred_len, window_tokens))
        return pr2139_block_spans(pred_len, window_tokens)

    monkeypatch.setattr(pr2139_ensemble, "pr2139_block_spans", spy)
    _run(tiny_cfg, val, peer_mode="pr2139", peer_k=3, peer_conf_threshold=0.0)
    ensembled = [d for b in build_queue(val.docs, 3) if len(b.docs) >= 3 for d in b.docs]
    assert sorted(calls) == sorted((d.pred_len, 16) for d in ensembled)


class _Recorder:
    """An Ensemble that commits the own score and records the hook calls in order."""

    compliant = covers_every_target = True
    peers_on = False

    def __init__(self, cfg, sink, log):
        self.sink, self.log = sink, log

    def before_batch(self, batch, chunk):
        self.log.append(("before", batch.batch_idx, len(self.sink.trace)))
        return False

    def commit(self, rows, w, nll, entropy):
        assert not nll.requires_grad and entropy is None
        self.log.append(("commit", int(w.valid.sum()), len(self.sink.trace)))
        self.sink.commit_ensemble(w, nll, None)

    def after_batch(self, batch, lora):
        assert lora.peer_index is None
        self.log.append(("after", batch.batch_idx, len(self.sink.trace)))

    def base_changed(self):
        self.log.append(("base_changed", None, len(self.sink.trace)))

    def warmup_peers(self, lora):
        return None


def test_the_loop_calls_the_hooks_per_batch_and_commits_before_updates(tiny_cfg, val, monkeypatch):
    from pgolf.ttt import score_first

    log: list = []
    monkeypatch.setattr(score_first, "make_ensemble", lambda cfg, sink: _Recorder(cfg, sink, log))
    cfg = small_cfg(tiny_cfg, phased_prefix_docs=3, global_chunk_tokens=16)
    trace: list = []
    res = run_ttt(fresh_model(cfg), val, cfg, trace=trace, dump=True)
    queue = build_queue(val.docs, 3)
    assert [e[1] for e in log if e[0] == "before"] == [b.batch_idx for b in queue]
    assert [e[1] for e in log if e[0] == "after"] == [b.batch_idx for b in queue]
    assert [e[0] for e in log].count("base_changed") == res.num_global_phases == 1
    assert sum(e[1] for e in log if e[0] == "commit") == res.coverage_tokens == val.num_targets
    # Each commit comes right after its chunk's own scores, with no update in between.
    committed = 0
    for kind, num, at in log:
        if kind == "commit":
            committed += num
            assert trace[at - 1][0] == "score" and sum(e[0] == "score" for e in trace[:at]) == committed
    assert (res.nll_final == res.nll_own).all()
