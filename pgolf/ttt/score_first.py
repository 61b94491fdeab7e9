"""Score-first test-time training: every target is scored once, before any update that uses it.

The scored evaluation of the record and of #2139. Documents are split at BOS,
sorted by length and cut into batches of `batch_size` that are processed
longest first; each batch gets one LoRA row per document (`BatchedLoRA`, base
model frozen). A document of `pred_len` targets is cut into chunks of C targets
(C from the batch's longest document via `short_chunk_steps`, else
`chunk_size`); chunk ci of a document runs a forward over the window
[max(0, end - eval_seq_len), end) that ends at the chunk's end (`windows.py`):

    ensemble.before_batch(batch)
    for ci in chunks:
        logits = model(window, adapters=lora)          one forward, all active docs of the batch
        commit own score(chunk targets)                detached, into the meter(s), BEFORE backward
        ensemble.commit(chunk scores)                  the committed ensemble score (or a stash)
        if not the doc's last chunk:
            AdamW step on sum_docs mean_chunk NLL      the same forward's graph
    ensemble.after_batch(batch, lora)

Scoring and training share one forward; the score is detached and committed to
the meters (and to the C3 trace) before `backward()` runs, so no update can
influence it. A document's last chunk is never trained on. Once P documents
are scored (the pause rule and the document set are the record's, see
`global_sgd.py`), phased global SGD adapts the base model on P of the scored
documents. The peer ensemble (`ttt.peer_mode`,
an `Ensemble` from `peer_modes.make_ensemble`) changes which probability is
committed; this loop does not know which mode runs.

Work sharing (`ttt.schedule`):
- static (default): `rank_schedule.static_plan` deals each segment's batches
  (the queue between global-SGD pauses) to `ttt.virtual_ranks` virtual ranks
  before any batch runs; each process runs its block of virtual ranks, each
  with its own `_Run` (LoRA A, generator, peer pool), one after the other. The
  pause comes where it would on that many GPUs. Nothing depends on the process
  count or on timing, so 1, 2 or 8 processes give the same bits.
- dynamic (#2139): each process is one rank and claims queue batches one at a
  time through a counter (the torch.distributed store; a local counter on one
  process), so which rank scores which batch depends on timing, and the pause on
  the process count.
Meters are gathered per (virtual) rank and added in rank order at the end, and
`run_ttt` asserts that every target was scored.
"""

from __future__ import annotations

import copy
import importlib
import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.distributed as dist

from pgolf.bpb import BpbMeter
from pgolf.config import RunConfig
from pgolf.device import policy_for
from pgolf.distributed import all_reduce_sum, barrier, gather_ranks, get_dist, ordered_sum, sync
from pgolf.ttt.global_sgd import pause_points, phase_boundaries, run_global_sgd, sgd_stream
from pgolf.ttt.lora import BatchedLoRA, FrozenLoRA
from pgolf.ttt.peer_modes import make_ensemble
from pgolf.ttt.rank_schedule import batch_ranks, ranks_here, static_plan
from pgolf.ttt.windows import (DocSpan, TTTBatch, Windows, build_queue, build_windows, chunk_size_for, chunk_span,
                               num_chunks, score_windows)

if TYPE_CHECKING:
    from pgolf.ngram_tilt import NgramTilt

# --------------------------------------------------------------------------- result


@dataclass
class TTTResult:
    own: BpbMeter
    """Score-first TTT, own adapters only (the record's number)."""
    ensemble_meter: BpbMeter
    """Every score the ensemble committed: `coverage_tokens` targets (off: the own scores again)."""
    peer_mode: str
    compliant: bool
    """False for `pr2139`: cross-document dependence inside a batch (C1) and a second scoring pass (C4)."""
    peers_on: bool
    """Peers took part: a mode with peers and peer_k > 1."""
    coverage_tokens: int
    """Targets in the ensemble meter."""
    target_tokens: int
    routed_tokens: int
    num_batches: int
    num_global_phases: int
    schedule: str = "static"
    virtual_ranks: int = 1
    """Ranks the score is a function of: `ttt.virtual_ranks` (static) or the process count (dynamic)."""
    phase_seconds: dict[str, float] = field(default_factory=dict)
    nll_own: np.ndarray | None = None
    """--dump-nll: per target (index = stream position - 1): own NLL, committed NLL, bytes, times scored."""
    nll_final: np.ndarray | None = None
    target_bytes: np.ndarray | None = None
    positions: np.ndarray | None = None
    score_counts: np.ndarray | None = None
    ngram: dict | None = None
    """The n-gram tilt's figures (`NgramTilt.figures`) when `eval.ngram_tilt` is on; the own meter is then tilted."""

    @property
    def peers_scored(self) -> bool:
        """Peers took part and the ensemble meter holds at least one target."""
        return self.peers_on and self.coverage_tokens > 0

    @property
    def ensemble(self) -> BpbMeter:
        """The mode's own figure: the ensemble meter if peers scored any target, else the own score.

        A non-compliant mode's figure is reported beside the headline, never as
        it; for `pr2139` it may cover only some batches (`coverage_tokens`).
        """
        return self.ensemble_meter if self.peers_scored else self.own

    def headline(self) -> tuple[str, BpbMeter]:
        """The run's TTT score, decided here only: ("ensemble", meter) or ("own", meter).

        The ensemble when a compliant mode's peers scored targets; otherwise
        (no peers, or a non-compliant mode) the own-adapter score.
        """
        if self.compliant and self.peers_scored:
            return "ensemble", self.ensemble_meter
        return "own", self.own

    @property
    def route_fraction(self) -> float:
        return self.routed_tokens / self.coverage_tokens if self.coverage_tokens else 0.0


# --------------------------------------------------------------------------- work sharing

_CALLS = itertools.count()


class _Claimer:
    """Hands out queue indices in [lo, hi), each exactly once over all ranks."""

    def __init__(self, name: str):
        self.name = name
        self.store = None
        if dist.is_initialized() and dist.get_world_size() > 1:
            # The process group's own key-value store: an atomic add shared by all ranks, no files
            # (#2139 used a flock'ed counter file in /tmp). torch has no public getter for it.
            self.store = dist.distributed_c10d._get_default_store()
        self.local: dict[str, int] = {}

    def next(self, segment: int, lo: int, hi: int) -> int | None:
        key = f"{self.name}/seg{segment}"
        if self.store is not None:
            idx = lo + int(self.store.add(key, 1)) - 1
        else:
            idx = lo + self.local.get(key, 0)
            self.local[key] = idx - lo + 1
        return idx if idx < hi else None


# --------------------------------------------------------------------------- the loop


class _Run:
    """State of one `run_ttt` call on one rank; the `ScoreSink` its ensemble scores through."""

    def __init__(self, model, val, cfg: RunConfig, trace: list | None, dump: bool, dump_from: _Run | None = None):
        self.model, self.val, self.cfg, self.t = model, val, cfg, cfg.ttt
        self.trace, self.dump = trace, dump
        self.device = next(model.parameters()).device
        # The device policy decides autocast, compile and the optimizer kernel (CUDA emulation included).
        self.policy = policy_for(self.device)
        self.autocast = self.policy.autocast
        self.fwd = model
        self.tokens = val.tokens.cpu()
        self.token_bytes = val.token_bytes.cpu()
        self.own, self.ensemble_meter = BpbMeter(), BpbMeter()
        self._bytes_of: Windows | None = None  # the windows whose target bytes `_bytes` holds
        self._bytes: torch.Tensor | None = None
        self.routed = torch.zeros((), dtype=torch.float64, device=self.device)  # on device: no sync per chunk
        self.covered = torch.zeros((), dtype=torch.float64, device=self.device)
        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        self.reusable: BatchedLoRA | None = None
        self.ensemble = make_ensemble(self.t, self)
        self.tilt: NgramTilt | None = None
        n = self.tokens.numel()
        if dump_from is not None:  # another virtual rank of this process: its targets are disjoint, the dump is shared
            self.nll_own, self.nll_final, self.counts = dump_from.nll_own, dump_from.nll_final, dump_from.counts
        else:
            self.nll_own = torch.zeros(n, dtype=torch.float64) if dump else None
            self.nll_final = torch.zeros(n, dtype=torch.float64) if dump else None
            self.counts = torch.zeros(n, dtype=torch.float64) if dump else None

    # -- adapters
    def lora_for(self, bsz: int) -> BatchedLoRA:
        if bsz != self.t.batch_size:  # a partial batch gets its own adapters; the reusable ones stay as they are
            return BatchedLoRA(self.cfg.model, self.t, bsz, self.model.num_slots, self.device, self.generator)
        if self.reusable is None:
            self.reusable = BatchedLoRA(self.cfg.model, self.t, bsz, self.model.num_slots, self.device,
                                        self.generator)
        self.reusable.reset()
        return self.reusable

    def optimizer(self, lora: BatchedLoRA) -> torch.optim.Optimizer:
        """A new AdamW per batch, i.e. zeroed moments and step.

        Fused under the record's bf16 policy, as the record's (torch has a fused CPU AdamW, so CUDA
        emulation runs the same kernel); the fp32 CPU policy keeps torch's default, the reference."""
        t = self.t
        return torch.optim.AdamW(lora.parameters(), lr=t.lora_lr * t.local_lr_mult, betas=(t.beta1, t.beta2),
                                 eps=t.eps, weight_decay=t.weight_decay,
                                 fused=self.policy.autocast_dtype is not None)

    # -- bookkeeping (the ScoreSink)
    def target_bytes(self, w: Windows) -> torch.Tensor:
        """Bytes of `w`'s valid targets, on the device."""
        # The own and the ensemble commit of a chunk share one host-to-device copy.
        if self._bytes_of is not w:
            self._bytes_of, self._bytes = w, self.token_bytes[w.stream_pos[w.valid]].to(self.device)
        return self._bytes

    def commit_own(self, docs: Sequence[DocSpan], w: Windows, nll: torch.Tensor) -> None:
        """Commit the own-adapter scores of `w`'s valid targets, before any update that uses them."""
        valid = w.valid.to(nll.device)
        self.own.add(nll[valid], self.target_bytes(w))
        if self.dump:
            pos = w.stream_pos[w.valid]
            self.nll_own[pos] = nll[valid].double().cpu()
            self.nll_final[pos] = self.nll_own[pos]  # until an ensemble commits another score for it
            self.counts[pos] += 1
        if self.trace is not None:
            for i, d in enumerate(docs):
                self.trace.extend(("score", d.index, int(p)) for p in w.stream_pos[i][w.valid[i]])

    def commit_ensemble(self, w: Windows, final: torch.Tensor, routed: torch.Tensor | None) -> None:
        """The ensemble's score of `w`'s valid targets into the ensemble meter (and the dump's final NLL)."""
        valid = w.valid.to(final.device)
        self.ensemble_meter.add(final[valid], self.target_bytes(w))
        self.covered += valid.sum()
        if routed is not None:
            self.routed += (routed & valid).sum()
        if self.dump:
            self.nll_final[w.stream_pos[w.valid]] = final[valid].double().cpu()

    def record_rescore(self, docs: Sequence[DocSpan], w: Windows) -> None:
        """A second score of `w`'s valid targets: counted in the dump and traced, so C4 checks see it."""
        if self.dump:
            self.counts[w.stream_pos[w.valid]] += 1
        if self.trace is not None:
            for i, d in enumerate(docs):
                self.trace.extend(("score", d.index, int(p)) for p in w.stream_pos[i][w.valid[i]])

    def peer_nll(self, adapters: BatchedLoRA | FrozenLoRA, w: Windows) -> torch.Tensor:
        nll, _ = score_windows(self.fwd, adapters, w, self.device, self.autocast, want_entropy=False)
        return nll

    def trace_update(self, docs: Sequence[DocSpan], w: Windows, rows: Sequence[int]) -> None:
        """An update uses every target of each trained row's window (the chunk's and its context's)."""
        if self.trace is not None:
            for i in rows:
                ws, _, end = w.spans[i]
                d = docs[i]
                self.trace.append(("update", d.index, tuple(range(d.start + 1 + ws, d.start + 1 + end))))

    # -- one batch
    def process(self, batch: TTTBatch) -> None:
        t, docs, bsz = self.t, batch.docs, len(batch.docs)
        lora = self.lora_for(bsz)
        opt = self.optimizer(lora)
        chunk = chunk_size_for(batch.max_len, t)
        ncs = [num_chunks(d.pred_len, chunk) for d in docs]
        want_entropy = self.ensemble.before_batch(batch, chunk)
        for ci in range(max(ncs)):
            # Docs shorter than ci+1 chunks are done; the rest share this chunk's forward.
            rows = [b for b in range(bsz) if ci < ncs[b]]
            # A doc's last chunk is scored but never trained on: no later target of the doc would use it.
            train_rows = [i for i, b in enumerate(rows) if ci < ncs[b] - 1]
            sub = [docs[b] for b in rows]
            w = build_windows(self.tokens, sub, [chunk_span(ci, d.pred_len, chunk, t.eval_seq_len) for d in sub])
            # Activation row i must use adapter row rows[i] once finished docs have dropped out.
            lora.peer_index = None if len(rows) == bsz else torch.tensor(rows, device=self.device)
            hint = self.tilt.hints_at(w.stream_pos - 1) if self.tilt is not None else None
            with torch.set_grad_enabled(bool(train_rows)):  # no graph when no row of the chunk trains
                nll, entropy, *logq = score_windows(self.fwd, lora, w, self.device, self.autocast,
                                                    want_entropy=want_entropy, hint=hint)
            nll_d = nll.detach()
            if self.tilt is not None:  # the scored number only: the update below trains on the untilted nll
                nll_d = self.tilt.apply(nll_d, logq[0], hint, self.tokens[w.stream_pos], w.valid)
            self.commit_own(sub, w, nll_d)
            self.ensemble.commit(rows, w, nll_d, entropy)
            # Scores are committed; only now may the chunk's targets update the adapters.
            with torch.enable_grad():
                for step in range(t.grad_steps if train_rows else 0):
                    if step > 0:  # later steps need a fresh forward through the updated adapters
                        nll, _ = score_windows(self.fwd, lora, w, self.device, self.autocast, want_entropy=False)
                    mask = torch.zeros(len(rows), 1, device=self.device)
                    mask[train_rows] = 1.0
                    loss = (nll * w.valid.to(self.device) * mask).sum() / chunk  # sum over docs of chunk means
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    self.trace_update(sub, w, train_rows)
            del nll  # frees this chunk's graph before the next forward
        lora.peer_index = None  # the batch's final adapters, unrouted, for the ensemble and the next batch
        self.ensemble.after_batch(batch, lora)


def run_ttt(model, val, cfg: RunConfig, *, trace: list | None = None, dump: bool = False, log=None,
            on_batch=None) -> TTTResult:
    """Score-first LoRA TTT over every validation target (see the module docstring).

    `model` is a `GPT`; its weights are not modified (phased global SGD trains a
    copy). `val` needs `tokens`, `token_bytes`, `docs` and `num_targets`
    (`pgolf.data.ValData`). `trace`, if a list, receives ("score", doc, pos) and
    ("update", doc, positions) events in order (stream positions of targets).
    `on_batch(num_docs, own_meters)`, if given, is called after each batch this process scores, with the running
    own-adapter meter of each (virtual) rank it runs (progress display).
    """
    t = cfg.ttt
    t_start = time.perf_counter()
    queue = build_queue(val.docs, t.batch_size)
    boundaries = phase_boundaries(t.phased_prefix_docs, t.phased_num_phases, sum(len(b.docs) for b in queue))
    num_ranks, vranks = ranks_here(t)
    pauses = pause_points([len(b.docs) for b in queue], boundaries, num_ranks)
    if pauses:
        model = copy.deepcopy(model)
    flags = [p.requires_grad for p in model.parameters()]
    was_training, was_looping = model.training, model.looping
    model.eval()
    model.set_looping(True)
    for p in model.parameters():
        p.requires_grad_(False)
    runs: list[_Run] = []
    for _ in vranks:
        runs.append(_Run(model, val, cfg, trace, dump, runs[0] if runs else None))
    seconds: dict[str, float] = {}
    try:
        if runs[0].policy.should_compile(cfg.train.compile):
            fwd, seconds["compile_warmup_s"] = _compile_and_warm(model, cfg, runs[0])
            for run in runs:
                run.fwd = fwd
        claimer = _Claimer(f"pgolf_ttt/{next(_CALLS)}")
        t_eval = time.perf_counter()
        ends = [nb for nb, _ in pauses] + [len(queue)]
        # static: each segment's batches per virtual rank, fixed before any batch runs
        plans = static_plan(queue, ends, t) if t.schedule == "static" else []
        if cfg.eval.tilted:  # imported by name: only a tilted record packs the module
            tilt = importlib.import_module("pgolf.ngram_tilt").NgramTilt.for_ttt(
                cfg, runs[0].tokens, queue, batch_ranks(plans, len(queue)) if plans else None)
            for run in runs:  # built inside the eval timer, as #2135's precompute
                run.tilt = tilt
        sgd_s = 0.0
        lo = 0
        for seg, hi in enumerate(ends):
            if t.schedule == "static":
                work = [(run, plans[seg][v]) for v, run in zip(vranks, runs)]
            else:
                work = [(runs[0], iter(lambda: claimer.next(seg, lo, hi), None))]
            for (run, qis), v in zip(work, vranks):
                for qi in qis:
                    run.process(queue[qi])
                    if on_batch is not None:
                        on_batch(len(queue[qi].docs), [r.own for r in runs])
                    if log is not None:
                        log.event("ttt_batch", queue_idx=qi, batch=queue[qi].batch_idx, docs=len(queue[qi].docs),
                                  max_len=queue[qi].max_len, rank=v, own_bpb=run.own.bpb(),
                                  elapsed_s=time.perf_counter() - t_start)
                # This rank's adapters are done: a pause rebuilds them with fresh A (and drops the peers) for the
                # adapted base. Freed now, so a process running many virtual ranks holds one set at a time.
                run.reusable = None
                if seg < len(pauses):
                    run.ensemble.base_changed()
            if seg < len(pauses):
                barrier()
                t0 = time.perf_counter()
                # The record's SGD set: every document scored so far, by (batch index, row), cut to the boundary.
                ordered = [d for b in sorted(queue[:hi], key=lambda b: b.batch_idx) for d in b.docs][:pauses[seg][1]]
                if trace is not None:
                    trace.extend(("update", doc.index, tuple(range(doc.start + 1, doc.start + doc.length)))
                                 for doc in ordered)
                stream = sgd_stream(runs[0].tokens, [(doc.start, doc.length) for doc in ordered])
                info = run_global_sgd(model, stream, t)
                sgd_s += time.perf_counter() - t0
                if log is not None:
                    log.event("ttt_global_sgd", phase=seg + 1, docs=pauses[seg][1], chunks=info["num_chunks"],
                              steps=info["num_steps"], seconds=info["seconds"])
                barrier()
            lo = hi
        seconds["eval_s"] = time.perf_counter() - t_eval - sgd_s
        seconds["global_sgd_s"] = sgd_s
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)
        model.set_looping(was_looping)
    return _finish(runs, val, cfg, queue, len(pauses), num_ranks, seconds, t_start)


def _sums(meter: BpbMeter) -> list[float]:
    return [meter.sum_nats, meter.sum_bytes, meter.num_tokens]


def _finish(runs: list[_Run], val, cfg: RunConfig, queue, num_phases: int, num_ranks: int, seconds,
            t_start) -> TTTResult:
    run = runs[0]
    ensemble = run.ensemble
    # Per (virtual) rank: own and ensemble sums, routed and covered targets; added in rank order on every process.
    rows = torch.tensor([[*_sums(r.own), *_sums(r.ensemble_meter), float(r.routed), float(r.covered)] for r in runs],
                        dtype=torch.float64)
    total = ordered_sum(gather_ranks(rows.to(get_dist().device))).tolist()
    own, ens = (BpbMeter.from_state(dict(zip(("sum_nats", "sum_bytes", "num_tokens"), total[i:i + 3])))
                for i in (0, 3))
    routed, covered = (int(round(x)) for x in total[6:])
    target_tokens = int(val.num_targets)
    # Ranks scored disjoint batches, so the summed counts must add up to the whole validation set.
    assert int(round(own.num_tokens)) == target_tokens, \
        f"score-first TTT scored {own.num_tokens:.0f} targets of {target_tokens}"
    if ensemble.covers_every_target:
        assert covered == target_tokens, f"ensemble covered {covered} targets of {target_tokens}"
    arrays: dict[str, Any] = {}
    if run.dump:
        dev = get_dist().device
        for name, arr in (("nll_own", run.nll_own), ("nll_final", run.nll_final), ("score_counts", run.counts)):
            arrays[name] = all_reduce_sum(arr.to(dev)).cpu().numpy()[1:]
        arrays["target_bytes"] = run.token_bytes.numpy()[1:].astype(np.int32)
        arrays["positions"] = np.arange(1, run.tokens.numel(), dtype=np.int64)
    seconds["total_s"] = time.perf_counter() - t_start
    return TTTResult(own=own, ensemble_meter=ens, peer_mode=cfg.ttt.peer_mode,
                     compliant=ensemble.compliant, peers_on=ensemble.peers_on, coverage_tokens=covered,
                     target_tokens=target_tokens, routed_tokens=routed, num_batches=len(queue),
                     num_global_phases=num_phases, schedule=cfg.ttt.schedule, virtual_ranks=num_ranks,
                     phase_seconds=seconds,
                     ngram=run.tilt.figures(lambda t: all_reduce_sum(t.to(get_dist().device))) if run.tilt else None,
                     **arrays)


def _compile_and_warm(model, cfg: RunConfig, run: _Run, backend: str = "inductor") -> tuple[Any, float]:
    """torch.compile the LoRA forward and run every variant the loop uses on random tokens (never val tokens).

    Per context length (the chunk sizes and the full window): a trained forward
    of all rows and of subsets of rows, one row included (backward + AdamW step), a score-only
    no-grad forward, and, when the ensemble has peers, a no-grad forward through
    routed peer adapters of the kind it uses. Timed separately from the evaluation.

    The policy's TTT compile arguments and recompile limits: the loop calls the forward in many guard
    variants (grad on/off, own/subset/peer routing, live or frozen adapters) on top of dynamic shapes,
    beyond dynamo's default limit of 8, past which it would silently fall back to eager.
    `backend` is for tests (aot_eager builds faster on CPU).
    """
    t0 = time.perf_counter()
    t = cfg.ttt
    fwd = run.policy.compile(model, ttt=True, backend=backend)
    g = torch.Generator().manual_seed(0)
    bsz = t.batch_size
    lora = BatchedLoRA(cfg.model, t, bsz, model.num_slots, run.device, g)
    opt = run.optimizer(lora)
    contexts = sorted({c for _, c in t.short_chunk_steps} | {t.chunk_size, t.eval_seq_len})
    want_entropy = run.ensemble.peers_on
    for ctx in contexts:
        num_scored = min(ctx, t.chunk_size)
        for rows in sorted({bsz, max(1, bsz - 1), 1}, reverse=True):  # size-1 dims are specialized by dynamo
            x = torch.randint(0, cfg.model.vocab_size, (rows, ctx + 1), generator=g)
            w = Windows(x=x[:, :-1], y=x[:, 1:], cols=torch.arange(num_scored).expand(rows, -1),
                        valid=torch.ones(rows, num_scored, dtype=torch.bool), tpos=torch.zeros(rows, num_scored),
                        stream_pos=torch.zeros(rows, num_scored), spans=[])
            lora.peer_index = None if rows == bsz else torch.arange(rows, device=run.device)
            nll, _ = score_windows(fwd, lora, w, run.device, run.autocast, want_entropy=want_entropy)
            opt.zero_grad(set_to_none=True)
            nll.mean(-1).sum().backward()
            opt.step()
            with torch.no_grad():
                score_windows(fwd, lora, w, run.device, run.autocast, want_entropy=want_entropy)
                peers = run.ensemble.warmup_peers(lora)
                if peers is not None:
                    peers.peer_index = torch.randint(0, bsz, (rows,), generator=g).to(run.device)
                    score_windows(fwd, peers, w, run.device, run.autocast, want_entropy=False)
    lora.peer_index = None
    sync(run.device)
    return fwd, time.perf_counter() - t0


