"""The evaluation progress bar: fed by the library loops' callbacks, drawn only where a person watches."""

from __future__ import annotations

import io
import math

import torch

from pgolf.app.progress import EvalProgress, chain
from pgolf.data import load_val
from pgolf.evaluate import eval_packed
from pgolf.model import GPT
from pgolf.ttt.score_first import run_ttt


def test_quiet_when_stderr_is_not_a_terminal(tiny_data):
    # pytest captures stderr, so it is not a terminal here: no bar, the callbacks are no-ops.
    bar = EvalProgress(load_val(tiny_data, val_docs_limit=3), "eval")
    assert not bar.enabled
    bar.packed(0, torch.ones(5))
    bar.close()


def test_packed_eval_counts_every_target_document_and_the_running_bpb(tiny_data, tiny_cfg):
    val = load_val(tiny_data, val_docs_limit=6)
    bar = EvalProgress(val, "eval", enabled=True)
    bar.bar.fp = io.StringIO()
    seen = []
    model = GPT(tiny_cfg.model).eval()
    meter = eval_packed(model, val, tiny_cfg.eval, on_scored=chain(lambda f, n: seen.append(n.numel()), bar.packed))
    assert bar.bar.n == val.num_targets == sum(seen)
    assert bar.docs == len(val.docs)
    assert math.isclose(bar.nats / math.log(2) / bar.bytes, meter.bpb(), rel_tol=1e-9)
    bar.close()


def test_ttt_reports_each_batch_and_ends_at_every_document(tiny_data, tiny_cfg):
    val = load_val(tiny_data, val_docs_limit=9)
    cfg = tiny_cfg.replace({"ttt.peer_mode": "off", "ttt.phased_prefix_docs": 0})
    bar = EvalProgress(val, "ttt", enabled=True)
    bar.bar.fp = io.StringIO()
    calls = []
    res = run_ttt(GPT(cfg.model), val, cfg, on_batch=chain(lambda d, m: calls.append(d), bar.ttt))
    assert sum(calls) == bar.docs == len(val.docs) and len(calls) == res.num_batches
    assert bar.bar.n == val.num_targets
    assert "bpb" in bar.bar.postfix
    bar.close()
