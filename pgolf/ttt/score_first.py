"""Score-first test-time training: every target is scored once, before any update that uses it.

The scored evaluation of the record (and of the seed, #2139). Documents are
split at BOS, sorted by length and cut into batches of `batch_size` that are
processed longest first; each batch gets one LoRA row per document
(`BatchedLoRA`, base model frozen). A document of `pred_len` targets is cut into
chunks of C targets (C from the batch's longest document via
`short_chunk_steps`, else `chunk_size`); chunk ci of a document runs a forward
over the window [max(0, end - eval_seq_len), end) that ends at the chunk's end:

    for ci in chunks:
        logits = model(window, adapters=lora)          one forward, all active docs of the batch
        commit score(chunk targets)                    detached, into the meter(s), BEFORE backward
        if not the doc's last chunk:
            AdamW step on sum_docs mean_chunk NLL      the same forward's graph

Scoring and training share one forward; the score is detached and committed to
the meters (and to the C3 trace) before `backward()` runs, so no update can
influence it. A document's last chunk is never trained on. After the first P
documents of the queue are scored, phased global SGD (`global_sgd.py`) adapts
the base model on exactly those documents. The peer ensemble
(`ensemble.py`) changes which probability is committed, never when.

Work sharing: ranks claim queue batches one at a time through a counter (the
torch.distributed store; a local counter on one process); meters are
all-reduced at the end and `run_ttt` asserts that every target was scored.
"""

from __future__ import annotations

import copy
import functools
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist

from pgolf.bpb import BpbMeter
from pgolf.config import RunConfig, TTTConfig
from pgolf.distributed import all_reduce_sum, autocast, barrier, get_dist
from pgolf.ttt import ensemble as ens
from pgolf.ttt.global_sgd import pause_points, phase_boundaries, run_global_sgd, sgd_stream
from pgolf.ttt.lora import BatchedLoRA

# --------------------------------------------------------------------------- documents and chunks


@dataclass(frozen=True)
class DocSpan:
    index: int
    """Position in `val.docs` (the stream order)."""
    start: int
    """Stream index of the document's BOS."""
    length: int
    """Tokens from its BOS to the next BOS inclusive; targets are start+1 .. start+length-1."""

    @property
    def pred_len(self) -> int:
        return self.length - 1


@dataclass(frozen=True)
class TTTBatch:
    batch_idx: int
    """Index in ascending-length order (the seed's orig_batch_idx)."""
    docs: tuple[DocSpan, ...]
    """Ascending length: row b is the b-th shortest."""

    @property
    def max_len(self) -> int:
        return max(d.length for d in self.docs)


def build_queue(docs: Sequence[tuple[int, int]], batch_size: int) -> list[TTTBatch]:
    """Sort docs by length (stable), cut into batches, order the batches by longest doc, descending (stable)."""
    spans = sorted((DocSpan(i, int(s), int(n)) for i, (s, n) in enumerate(docs) if n > 1), key=lambda d: d.length)
    batches = [TTTBatch(bi, tuple(spans[i: i + batch_size])) for bi, i in enumerate(range(0, len(spans), batch_size))]
    return sorted(batches, key=lambda b: -b.max_len)


def chunk_size_for(max_doc_len: int, cfg: TTTConfig) -> int:
    """C for a batch whose longest doc has `max_doc_len` tokens: the first short step that fits, else chunk_size."""
    for doc_len, chunk in sorted(cfg.short_chunk_steps):
        if max_doc_len <= doc_len:
            return chunk
    return cfg.chunk_size


def num_chunks(pred_len: int, chunk: int) -> int:
    return (pred_len + chunk - 1) // chunk


def chunk_span(ci: int, pred_len: int, chunk: int, window_tokens: int) -> tuple[int, int, int]:
    """(window start, chunk start, chunk end) in doc target coordinates; the window ends at the chunk's end."""
    end = min((ci + 1) * chunk, pred_len)
    return max(0, end - window_tokens), ci * chunk, end


@dataclass
class Windows:
    """One forward's inputs for a set of docs and, per doc, the targets it scores."""
    x: torch.Tensor           # long [n, W] inputs (0 past a row's window)
    y: torch.Tensor           # long [n, W] next tokens
    cols: torch.Tensor        # long [n, S] column of each scored target
    valid: torch.Tensor       # bool [n, S]
    tpos: torch.Tensor        # long [n, S] doc target index (0 where invalid)
    stream_pos: torch.Tensor  # long [n, S] stream index of the target token
    spans: list[tuple[int, int, int]]


def build_windows(tokens: torch.Tensor, docs: Sequence[DocSpan], spans: Sequence[tuple[int, int, int]]) -> Windows:
    """Row i feeds doc targets [win_start, end) of docs[i] and scores targets [score_start, end)."""
    assert len(docs) == len(spans) > 0
    starts = torch.tensor([d.start + ws for d, (ws, _, _) in zip(docs, spans)])
    widths = torch.tensor([e - ws for ws, _, e in spans])
    offsets = torch.tensor([ss - ws for ws, ss, _ in spans])
    counts = torch.tensor([e - ss for _, ss, e in spans])
    width, num_scored = int(widths.max()), int(counts.max())
    col = torch.arange(width + 1)
    gathered = tokens[(starts[:, None] + col[None]).clamp_(max=tokens.numel() - 1)].long()
    inside = col[None, :width] < widths[:, None]
    j = torch.arange(num_scored)
    valid = j[None] < counts[:, None]
    tpos = torch.where(valid, torch.tensor([ss for _, ss, _ in spans])[:, None] + j[None], 0)
    return Windows(x=torch.where(inside, gathered[:, :width], 0), y=torch.where(inside, gathered[:, 1:], 0),
                   cols=(offsets[:, None] + j[None]).clamp_(max=width - 1), valid=valid, tpos=tpos,
                   stream_pos=torch.tensor([d.start + 1 for d in docs])[:, None] + tpos, spans=list(spans))


def score_windows(fwd, adapters, w: Windows, device: torch.device, autocast, *,
                  want_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """NLL [n, S] of the scored targets (carrying the graph if grad is enabled) and the own entropy (detached)."""
    with autocast():
        logits = fwd(w.x.to(device), adapters=adapters)
    rows = torch.arange(w.x.shape[0], device=device)[:, None]
    cols = w.cols.to(device)
    logp = torch.log_softmax(logits[rows, cols].float(), dim=-1)                # [n, S, V]
    nll = -logp.gather(-1, w.y.to(device)[rows, cols][..., None]).squeeze(-1)
    entropy = ens.entropy_nats(logp.detach()) if want_entropy else None
    return nll, entropy


# --------------------------------------------------------------------------- result


@dataclass
class TTTResult:
    own: BpbMeter
    """Score-first TTT, own adapters only (the record's number)."""
    ensemble: BpbMeter
    """The committed peer-ensemble score (== own when peer_mode is off); seed mode: covered batches only."""
    peer_mode: str
    compliant: bool
    """False for `seed` mode: symmetric cross-document dependence (C1) and a second scoring pass (C4)."""
    coverage_tokens: int
    """Targets in the ensemble meter."""
    target_tokens: int
    routed_tokens: int
    num_batches: int
    num_global_phases: int
    phase_seconds: dict[str, float] = field(default_factory=dict)
    nll_own: np.ndarray | None = None
    """--dump-nll: per target (index = stream position - 1): own NLL, committed NLL, bytes, times scored."""
    nll_final: np.ndarray | None = None
    target_bytes: np.ndarray | None = None
    positions: np.ndarray | None = None
    score_counts: np.ndarray | None = None

    @property
    def route_fraction(self) -> float:
        return self.routed_tokens / self.coverage_tokens if self.coverage_tokens else 0.0

    def report_fields(self) -> dict[str, Any]:
        """The report.json fields of the TTT phase."""
        return {"val_bpb_ttt": self.own.bpb(), "val_loss_ttt": self.own.loss(),
                "val_bpb_ttt_ensemble": self.ensemble.bpb(), "val_loss_ttt_ensemble": self.ensemble.loss(),
                "peer_mode": self.peer_mode, "ttt_compliant": self.compliant,
                "route_fraction": self.route_fraction, "coverage_tokens": self.coverage_tokens,
                "target_tokens": self.target_tokens, "ttt_num_global_phases": self.num_global_phases,
                "ttt_phase_seconds": dict(self.phase_seconds)}


# --------------------------------------------------------------------------- work sharing

_CALLS = itertools.count()


class _Claimer:
    """Hands out queue indices in [lo, hi), each exactly once over all ranks."""

    def __init__(self, name: str):
        self.name = name
        self.store = None
        if dist.is_initialized() and dist.get_world_size() > 1:
            # The process group's own key-value store: an atomic add shared by all ranks, no files
            # (the seed used a flock'ed counter file in /tmp). torch has no public getter for it.
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


def _use_compile(cfg: RunConfig, device: torch.device) -> bool:
    return cfg.train.compile == "on" or (cfg.train.compile == "auto" and device.type == "cuda")


class _Run:
    """State of one `run_ttt` call on one rank."""

    def __init__(self, model, val, cfg: RunConfig, trace: list | None, dump: bool):
        self.model, self.val, self.cfg, self.t = model, val, cfg, cfg.ttt
        self.trace, self.dump = trace, dump
        self.device = next(model.parameters()).device
        self.autocast = functools.partial(autocast, self.device)
        self.fwd = model
        self.tokens = val.tokens.cpu()
        self.token_bytes = val.token_bytes.cpu()
        self.own, self.ens = BpbMeter(), BpbMeter()
        self.routed = torch.zeros((), dtype=torch.float64, device=self.device)  # on device: no sync per chunk
        self.covered = torch.zeros((), dtype=torch.float64, device=self.device)
        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        self.reusable: BatchedLoRA | None = None
        self.k = self.t.peer_k if self.t.peer_mode != "off" else 1
        self.pool = ens.PeerPool(self.k)
        n = self.tokens.numel()
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
        """A new AdamW per batch, i.e. zeroed moments and step."""
        t = self.t
        return torch.optim.AdamW(lora.parameters(), lr=t.lora_lr * t.local_lr_mult, betas=(t.beta1, t.beta2),
                                 eps=t.eps, weight_decay=t.weight_decay, fused=self.device.type == "cuda")

    # -- bookkeeping
    def commit_own(self, docs: Sequence[DocSpan], w: Windows, nll: torch.Tensor) -> None:
        """Commit the own-adapter scores of `w`'s valid targets, before any update that uses them."""
        valid = w.valid.to(nll.device)
        self.own.add(nll[valid], self.token_bytes[w.stream_pos[w.valid]].to(nll.device))
        if self.dump:
            pos = w.stream_pos[w.valid]
            self.nll_own[pos] = nll[valid].double().cpu()
            self.nll_final[pos] = self.nll_own[pos]
            self.counts[pos] += 1
        if self.trace is not None:
            for i, d in enumerate(docs):
                self.trace.extend(("score", d.index, int(p)) for p in w.stream_pos[i][w.valid[i]])

    def commit_ensemble(self, w: Windows, final: torch.Tensor, routed: torch.Tensor | None) -> None:
        """The ensemble's score of the same targets (causal: the committed blend; seed: the re-score)."""
        valid = w.valid.to(final.device)
        self.ens.add(final[valid], self.token_bytes[w.stream_pos[w.valid]].to(final.device))
        self.covered += valid.sum()
        if routed is not None:
            self.routed += (routed & valid).sum()
        if self.dump:
            self.nll_final[w.stream_pos[w.valid]] = final[valid].double().cpu()

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
        peer_prob = None
        if t.peer_mode == "causal" and self.k > 1 and self.pool.num_docs > 0:
            peer_prob = self.causal_peer_probs(batch, chunk)
        seed_ens = t.peer_mode == "seed" and self.k > 1 and bsz >= self.k
        if seed_ens:  # #2139's stashes of the own pass, blended after the batch
            max_pred = max(d.pred_len for d in docs)
            own_stash = torch.zeros(bsz, max_pred, device=self.device)
            ent_stash = torch.zeros(bsz, max_pred, device=self.device)
        for ci in range(max(ncs)):
            rows = [b for b in range(bsz) if ci < ncs[b]]
            train_rows = [i for i, b in enumerate(rows) if ci < ncs[b] - 1]
            sub = [docs[b] for b in rows]
            w = build_windows(self.tokens, sub, [chunk_span(ci, d.pred_len, chunk, t.eval_seq_len) for d in sub])
            lora.peer_index = None if len(rows) == bsz else torch.tensor(rows, device=self.device)
            with torch.set_grad_enabled(bool(train_rows)):
                nll, entropy = score_windows(self.fwd, lora, w, self.device, self.autocast,
                                             want_entropy=peer_prob is not None or seed_ens)
            nll_d = nll.detach()
            self.commit_own(sub, w, nll_d)
            if t.peer_mode == "causal":
                if peer_prob is None:  # nothing finished before this batch: own-only, still covered
                    self.commit_ensemble(w, nll_d, None)
                else:
                    pp = peer_prob[torch.tensor(rows)[:, None], w.tpos].to(self.device)
                    self.commit_ensemble(w, *ens.blend_nll(nll_d, pp, entropy, t.peer_conf_threshold,
                                                           t.peer_blend_w))
            elif seed_ens:
                v = w.valid.to(self.device)
                r = torch.tensor(rows, device=self.device)[:, None].expand_as(v)[v]
                tp = w.tpos.to(self.device)[v]
                own_stash[r, tp] = nll_d[v]
                ent_stash[r, tp] = entropy[v]
            # Scores are committed; only now may the chunk's targets update the adapters.
            with torch.enable_grad():
                for step in range(t.grad_steps if train_rows else 0):
                    if step > 0:
                        nll, _ = score_windows(self.fwd, lora, w, self.device, self.autocast, want_entropy=False)
                    mask = torch.zeros(len(rows), 1, device=self.device)
                    mask[train_rows] = 1.0
                    loss = (nll * w.valid.to(self.device) * mask).sum() / chunk  # sum over docs of chunk means
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    self.trace_update(sub, w, train_rows)
            del nll
        lora.peer_index = None
        if seed_ens:
            self.seed_peer_pass(batch, lora, own_stash, ent_stash)
        if t.peer_mode == "causal" and self.k > 1:
            self.pool.add(lora.snapshot())

    # -- peers
    def causal_peer_probs(self, batch: TTTBatch, chunk: int) -> torch.Tensor:
        """Mean over frozen peers of p_peer(actual next token) per doc target [bsz, max_pred] (float64, CPU).

        Peers are finished, so their prediction at t depends only on the doc's
        prefix: computed before the chunk loop, with the scoring context rule
        (targets of the first eval_seq_len//C chunks all see the doc from its
        start, so one forward covers them; later chunks use their own window).
        """
        t, docs = self.t, batch.docs
        pool = self.pool.adapters()
        ids = ens.causal_peer_ids(len(docs), pool.num_docs, self.k, t.peer_seed, batch.batch_idx)
        ncs = [num_chunks(d.pred_len, chunk) for d in docs]
        first = t.eval_seq_len // chunk
        plans = [[(b, (0, 0, min(first * chunk, d.pred_len))) for b, d in enumerate(docs)]]
        for ci in range(first, max(ncs)):
            plans.append([(b, chunk_span(ci, d.pred_len, chunk, t.eval_seq_len))
                          for b, d in enumerate(docs) if ci < ncs[b]])
        prob_sum = torch.zeros(len(docs), max(d.pred_len for d in docs), dtype=torch.float64)
        with torch.no_grad():
            for s in range(ids.shape[1]):
                for plan in plans:
                    rows = [b for b, _ in plan]
                    w = build_windows(self.tokens, [docs[b] for b in rows], [sp for _, sp in plan])
                    pool.peer_index = ids[rows, s].to(self.device)
                    nll, _ = score_windows(self.fwd, pool, w, self.device, self.autocast, want_entropy=False)
                    r = torch.tensor(rows)[:, None].expand_as(w.tpos)
                    prob_sum[r[w.valid], w.tpos[w.valid]] += torch.exp(-nll.double()).cpu()[w.valid]
        pool.peer_index = None
        return prob_sum / ids.shape[1]

    def seed_peer_pass(self, batch: TTTBatch, lora: BatchedLoRA, own_stash, ent_stash) -> None:
        """#2139: re-score the batch with in-batch peers in non-overlapping windows, then blend (a second pass)."""
        t, docs, bsz = self.t, batch.docs, len(batch.docs)
        ids = ens.seed_peer_ids(bsz, self.k, t.peer_seed, batch.batch_idx)
        max_pred = own_stash.shape[1]
        prob_sum = torch.zeros(bsz, max_pred, dtype=torch.float64, device=self.device)
        with torch.no_grad():
            for s in range(self.k - 1):
                for c in range(0, max_pred, t.eval_seq_len):
                    rows = [b for b in range(bsz) if c < docs[b].pred_len]
                    spans = [(c, c, min(c + t.eval_seq_len, docs[b].pred_len)) for b in rows]
                    w = build_windows(self.tokens, [docs[b] for b in rows], spans)
                    lora.peer_index = ids[rows, s].to(self.device)
                    nll, _ = score_windows(self.fwd, lora, w, self.device, self.autocast, want_entropy=False)
                    r = torch.tensor(rows, device=self.device)[:, None].expand_as(nll)
                    v = w.valid.to(self.device)
                    prob_sum.index_put_((r[v], w.tpos.to(self.device)[v]), torch.exp(-nll.double())[v],
                                        accumulate=True)
        lora.peer_index = None
        w = build_windows(self.tokens, docs, [(0, 0, d.pred_len) for d in docs])
        r, tp = torch.arange(bsz, device=self.device)[:, None], w.tpos.to(self.device)
        final, routed = ens.blend_nll(own_stash[r, tp], (prob_sum / (self.k - 1))[r, tp], ent_stash[r, tp],
                                      t.peer_conf_threshold, t.peer_blend_w)
        self.commit_ensemble(w, final, routed)
        if self.dump:
            self.counts[w.stream_pos[w.valid]] += 1
        if self.trace is not None:  # the re-score is a second score of every target (C4)
            for i, d in enumerate(docs):
                self.trace.extend(("score", d.index, int(p)) for p in w.stream_pos[i][w.valid[i]])


def run_ttt(model, val, cfg: RunConfig, *, trace: list | None = None, dump: bool = False, log=None) -> TTTResult:
    """Score-first LoRA TTT over every validation target (see the module docstring).

    `model` is a `GPT`; its weights are not modified (phased global SGD trains a
    copy). `val` needs `tokens`, `token_bytes`, `docs` and `num_targets`
    (`pgolf.data.ValData`). `trace`, if a list, receives ("score", doc, pos) and
    ("update", doc, positions) events in order (stream positions of targets).
    """
    t = cfg.ttt
    t_start = time.perf_counter()
    queue = build_queue(val.docs, t.batch_size)
    boundaries = phase_boundaries(t.phased_prefix_docs, t.phased_num_phases, sum(len(b.docs) for b in queue))
    pauses = pause_points([len(b.docs) for b in queue], boundaries)
    if pauses:
        model = copy.deepcopy(model)
    flags = [p.requires_grad for p in model.parameters()]
    was_training, was_looping = model.training, model.looping
    model.eval()
    model.set_looping(True)
    for p in model.parameters():
        p.requires_grad_(False)
    run = _Run(model, val, cfg, trace, dump)
    seconds: dict[str, float] = {}
    try:
        if _use_compile(cfg, run.device):
            run.fwd, seconds["compile_warmup_s"] = _compile_and_warm(model, cfg, run)
        claimer = _Claimer(f"pgolf_ttt/{next(_CALLS)}")
        t_eval = time.perf_counter()
        sgd_s = 0.0
        lo = 0
        ends = [nb for nb, _ in pauses] + [len(queue)]
        for seg, hi in enumerate(ends):
            while (qi := claimer.next(seg, lo, hi)) is not None:
                run.process(queue[qi])
                if log is not None:
                    log.event("ttt_batch", queue_idx=qi, batch=queue[qi].batch_idx, docs=len(queue[qi].docs),
                              max_len=queue[qi].max_len, own_bpb=run.own.bpb(), elapsed_s=time.perf_counter() - t_start)
            if seg < len(pauses):
                barrier()
                t0 = time.perf_counter()
                ordered = [doc for b in queue for doc in b.docs][: pauses[seg][1]]
                if trace is not None:
                    trace.extend(("update", doc.index, tuple(range(doc.start + 1, doc.start + doc.length)))
                                 for doc in ordered)
                stream = sgd_stream(run.tokens, [(doc.start, doc.length) for doc in ordered])
                info = run_global_sgd(model, stream, t, autocast=run.autocast)
                run.reusable = None  # rebuilt with fresh A for the adapted base
                run.pool.clear()     # finished adapters were fit to the old base
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
    return _finish(run, val, cfg, queue, len(pauses), seconds, t_start)


def _finish(run: _Run, val, cfg: RunConfig, queue, num_phases: int, seconds, t_start) -> TTTResult:
    t = cfg.ttt
    run.own.all_reduce()
    run.ens.all_reduce()
    counts = torch.stack([run.routed, run.covered]).to(get_dist().device)
    routed, covered = (int(round(x)) for x in all_reduce_sum(counts).tolist())
    if t.peer_mode == "off":
        covered = int(round(run.own.num_tokens))
    target_tokens = int(val.num_targets)
    assert int(round(run.own.num_tokens)) == target_tokens, \
        f"score-first TTT scored {run.own.num_tokens:.0f} targets of {target_tokens}"
    if t.peer_mode != "seed":
        assert covered == target_tokens, f"ensemble covered {covered} targets of {target_tokens}"
    arrays: dict[str, Any] = {}
    if run.dump:
        dev = get_dist().device
        for name, arr in (("nll_own", run.nll_own), ("nll_final", run.nll_final), ("score_counts", run.counts)):
            arrays[name] = all_reduce_sum(arr.to(dev)).cpu().numpy()[1:]
        arrays["target_bytes"] = run.token_bytes.numpy()[1:].astype(np.int32)
        arrays["positions"] = np.arange(1, run.tokens.numel(), dtype=np.int64)
    seconds["total_s"] = time.perf_counter() - t_start
    # #2139 returns the own-only score when no batch reached the ensemble (K=1, or every batch smaller than K).
    ensemble = run.own if t.peer_mode == "off" or (t.peer_mode == "seed" and covered == 0) else run.ens
    return TTTResult(own=run.own, ensemble=ensemble, peer_mode=t.peer_mode,
                     compliant=t.peer_mode != "seed", coverage_tokens=covered, target_tokens=target_tokens,
                     routed_tokens=routed, num_batches=len(queue), num_global_phases=num_phases,
                     phase_seconds=seconds, **arrays)


RECOMPILE_LIMIT = 64
"""TTT calls the forward in several guard variants (grad on/off, own/subset/peer routing, live or frozen
adapters) on top of dynamic shapes; dynamo's default limit of 8 would silently fall back to eager."""


def _compile_and_warm(model, cfg: RunConfig, run: _Run) -> tuple[Any, float]:
    """torch.compile the LoRA forward and run every variant the loop uses on random tokens (never val tokens).

    Per context length (the chunk sizes and the full window): a trained forward
    of all rows and of subsets of rows, one row included (backward + AdamW step), a score-only
    no-grad forward, and with K > 1 a no-grad forward through routed frozen
    peers. Timed separately from the evaluation.
    """
    t0 = time.perf_counter()
    t = cfg.ttt
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    fwd = torch.compile(model, dynamic=True)
    g = torch.Generator().manual_seed(0)
    bsz = t.batch_size
    lora = BatchedLoRA(cfg.model, t, bsz, model.num_slots, run.device, g)
    opt = run.optimizer(lora)
    contexts = sorted({c for _, c in t.short_chunk_steps} | {t.chunk_size, t.eval_seq_len})
    for ctx in contexts:
        num_scored = min(ctx, t.chunk_size)
        for rows in sorted({bsz, max(1, bsz - 1), 1}, reverse=True):  # size-1 dims are specialized by dynamo
            x = torch.randint(0, cfg.model.vocab_size, (rows, ctx + 1), generator=g)
            w = Windows(x=x[:, :-1], y=x[:, 1:], cols=torch.arange(num_scored).expand(rows, -1),
                        valid=torch.ones(rows, num_scored, dtype=torch.bool), tpos=torch.zeros(rows, num_scored),
                        stream_pos=torch.zeros(rows, num_scored), spans=[])
            lora.peer_index = None if rows == bsz else torch.arange(rows, device=run.device)
            nll, _ = score_windows(fwd, lora, w, run.device, run.autocast, want_entropy=run.k > 1)
            opt.zero_grad(set_to_none=True)
            nll.mean(-1).sum().backward()
            opt.step()
            with torch.no_grad():
                score_windows(fwd, lora, w, run.device, run.autocast, want_entropy=run.k > 1)
                if run.k > 1:
                    peers = lora.snapshot() if t.peer_mode == "causal" else lora
                    peers.peer_index = torch.randint(0, bsz, (rows,), generator=g).to(run.device)
                    score_windows(fwd, peers, w, run.device, run.autocast, want_entropy=False)
    lora.peer_index = None
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    return fwd, time.perf_counter() - t0


def synthetic_val(doc_lengths: Sequence[int], vocab_size: int, seed: int = 0, period: int = 0):
    """A `ValData` of random documents (for tests and benchmarks): doc i has doc_lengths[i] targets.

    Tokens are drawn from [2, vocab_size) (never BOS); with `period` > 0 each
    document repeats its first `period` tokens, which TTT can learn. Bytes per
    target are 1..3 (BOS 0).
    """
    from pgolf.data import ValData, find_docs

    g = torch.Generator().manual_seed(seed)
    ids: list[int] = []
    for n in doc_lengths:
        body = torch.randint(2, vocab_size, (n - 1,), generator=g)
        if period > 0:
            body = body[:period].repeat((n - 1) // period + 1)[: n - 1]
        ids += [1] + body.tolist()
    ids.append(1)
    tokens = torch.tensor(ids, dtype=torch.long)
    token_bytes = torch.randint(1, 4, (tokens.numel(),), generator=g, dtype=torch.int32)
    token_bytes[tokens == 1] = 0
    return ValData(tokens=tokens, token_bytes=token_bytes, docs=find_docs(tokens))
