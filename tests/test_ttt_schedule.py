"""The static TTT schedule: the score is a function of the artifact, the data and N virtual ranks only.

The determinism tests run the same TTT in this process (one process, 2 virtual
ranks) and under `torchrun --nproc_per_node=2` (gloo, one virtual rank each; two each in `global_sgd_4`)
and require the per-target NLL dump and the meters' sums to be equal bit for
bit: own-only, with global SGD, and with the causal ensemble. The LoRA LR is
non-zero, so carried state (A, peers) changes scores and a wrong assignment or a
shared state would show.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pgolf.errors import ConfigError
from pgolf.synthetic import synthetic_val
from pgolf.ttt.global_sgd import pause_points
from pgolf.ttt.rank_schedule import assign_batches
from pgolf.ttt.score_first import build_queue, run_ttt
from test_ttt_score_first import fresh_model, small_cfg

HERE = Path(__file__).resolve().parent
# 12 documents in batches of 2: 6 batches, 3 per virtual rank; the pause (4 docs) comes after 3 batches on 2 ranks.
DOC_TARGETS = [4, 7, 10, 15, 21, 30, 9, 5, 12, 18, 6, 25]
CASES = {
    "own": {"peer_mode": "off"},
    "global_sgd": {"peer_mode": "off", "phased_prefix_docs": 4, "global_lr": 0.05, "global_chunk_tokens": 48},
    "causal": {"peer_mode": "causal", "peer_k": 2, "phased_prefix_docs": 4, "global_lr": 0.05,
               "global_chunk_tokens": 48},
    # Two virtual ranks per process: the gradients of 4 add up in one order on 1 process and on 2.
    # Windows and SGD sequences of 8 tokens: the 4 trained documents make one step of 4 sequences, one per rank.
    "global_sgd_4": {"peer_mode": "off", "phased_prefix_docs": 4, "global_lr": 0.05, "global_chunk_tokens": 32,
                     "eval_seq_len": 8, "chunk_size": 8, "virtual_ranks": 4},
}


def case_cfg(overrides: dict, **extra):
    from pgolf.config import load_preset

    return small_cfg(load_preset("tiny"), **{"batch_size": 2, "lora_lr": 0.02, "schedule": "static",
                                             "virtual_ranks": 2, **overrides, **extra})


def run_case(name: str, overrides: dict, **extra) -> dict:
    """Everything a run's score is made of: the NLL dump, the meters' sums, routing and the phase count."""
    cfg = case_cfg(overrides, **extra)
    val = synthetic_val(DOC_TARGETS, cfg.model.vocab_size, seed=3)
    res = run_ttt(fresh_model(cfg), val, cfg, dump=True)
    return {"nll_own": torch.from_numpy(res.nll_own), "nll_final": torch.from_numpy(res.nll_final),
            "counts": torch.from_numpy(res.score_counts),
            "sums": torch.tensor([res.own.sum_nats, res.own.sum_bytes, res.ensemble_meter.sum_nats,
                                  float(res.routed_tokens), float(res.num_global_phases)], dtype=torch.float64)}


def _same_bits(a: dict, b: dict) -> list[str]:
    return [k for k in a if not (a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def torchrun_results(tmp_path_factory) -> dict:
    """Each case under torchrun --nproc_per_node=2 (gloo): one launch for all three."""
    out = tmp_path_factory.mktemp("ttt_ranks")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PGOLF_QUIET": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE), os.environ.get("PYTHONPATH", "")])}
    for _attempt in range(2):  # another job may grab the port between pick and bind
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                               f"--master_port={_free_port()}", str(HERE / "ttt_schedule_worker.py"), str(out),
                               *CASES], env=env, capture_output=True, text=True, timeout=300)
        if proc.returncode == 0 or "address already in use" not in proc.stderr.lower():
            break
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {case: torch.load(out / f"{case}.pt") for case in CASES}


@pytest.mark.parametrize("case", list(CASES))
def test_one_process_equals_two_processes_bit_for_bit(case, torchrun_results):
    one = run_case(case, CASES[case])
    again = run_case(case, CASES[case])
    assert not _same_bits(one, again), "two runs in one process differ"
    assert (one["counts"] == 1).all()
    if case != "own":
        assert one["sums"][4] == 1, "the case should pause for global SGD"
        frozen = run_case(case, {**CASES[case], "global_lr": 0.0})
        assert not torch.equal(one["nll_own"], frozen["nll_own"]), "global SGD should change later scores"
    if case == "causal":
        assert one["sums"][3] > 0, "the case should route targets to peers"
    differ = _same_bits(one, torchrun_results[case])
    assert not differ, f"1 process vs torchrun x2 (virtual_ranks=2): {differ} differ"


def test_virtual_rank_count_changes_the_score_but_one_equals_the_dynamic_queue():
    """N is part of the result (carried state differs), and N=1 on one process is #2139's one-GPU run."""
    case = CASES["causal"]
    two = run_case("causal", case)
    one = run_case("causal", case, virtual_ranks=1)
    dynamic = run_case("causal", case, virtual_ranks=1, schedule="dynamic")
    assert not torch.equal(one["nll_final"], two["nll_final"])
    assert not _same_bits(one, dynamic)


def test_assignment_covers_each_batch_once_and_balances_tokens():
    costs = [900, 500, 480, 300, 300, 120, 100, 100, 90, 40, 30, 10]
    plan = assign_batches(costs, 4)
    assert sorted(i for rows in plan for i in rows) == list(range(len(costs)))
    assert all(rows == sorted(rows) for rows in plan)  # each virtual rank keeps the queue order
    loads = [sum(costs[i] for i in rows) for rows in plan]
    assert max(loads) - min(loads) <= max(costs[len(plan):])  # greedy longest-first: within one later batch
    assert plan[0][0] == 0 and plan == assign_batches(costs, 4)


def test_static_pause_is_where_n_ranks_pause_whatever_the_process_count():
    sizes = [len(b.docs) for b in build_queue([(0, n + 1) for n in DOC_TARGETS], 2)]
    assert pause_points(sizes, [4], num_ranks=2) == [(3, 4)]
    assert pause_points(sizes, [4], num_ranks=1) == [(2, 4)]


def test_bad_schedule_and_indivisible_rank_counts_are_config_errors(monkeypatch):
    import dataclasses

    from pgolf.ttt import score_first

    with pytest.raises(ConfigError, match="ttt.schedule"):
        case_cfg({}, schedule="sometimes")
    with pytest.raises(ConfigError, match="ttt.virtual_ranks"):
        case_cfg({}, virtual_ranks=0)
    one = score_first.get_dist()
    monkeypatch.setattr("pgolf.distributed.get_dist", lambda: dataclasses.replace(one, world_size=3))
    cfg = case_cfg({})
    with pytest.raises(ConfigError, match="not a multiple of the 3 processes"):
        run_ttt(fresh_model(cfg), synthetic_val(DOC_TARGETS, cfg.model.vocab_size), cfg)


def test_window_tokens_are_what_the_chunk_forwards_process(monkeypatch):
    """The schedule's cost of a batch equals rows x width of every own-score forward the loop runs for it."""
    from pgolf.ttt import score_first
    from pgolf.ttt.rank_schedule import window_tokens

    cfg = case_cfg({"peer_mode": "off"}, virtual_ranks=1)
    val = synthetic_val(DOC_TARGETS, cfg.model.vocab_size, seed=3)
    seen = []
    real = score_first.score_windows
    monkeypatch.setattr(score_first, "score_windows",
                        lambda fwd, lora, w, *a, **k: seen.append(w.x.numel()) or real(fwd, lora, w, *a, **k))
    run_ttt(fresh_model(cfg), val, cfg)
    assert sum(seen) == sum(window_tokens(b, cfg.ttt) for b in build_queue(val.docs, cfg.ttt.batch_size))
