"""Plots a person would rather look at than read: one PNG of a run's training and its final scores.

Reads RUN/train.jsonl, RUN/config.json and RUN/report.json and writes
RUN/train_loss.png with two panels:

  left   training loss against step (tokens on the top axis), val_bpb of every
         validation during training on a second y axis (periodic evaluations
         of the raw weights, then the final EMA and raw weights), and vertical
         lines where the schedule changed: each sequence-length stage, depth
         recurrence switching on, the warmdown's start
  right  the final stages side by side: raw and EMA weights before
         quantization, the quantized artifact, TTT and the ensemble

The title names the preset and the data directory. matplotlib is optional (the
`plot` extra); without it nothing is drawn and nothing fails.
"""

from __future__ import annotations

import json
from pathlib import Path

from pgolf.runlog import read_jsonl

# (report key, bar label), left to right in the order a run produces them.
FINAL_STAGES = (("val_bpb_pre_ema", "raw weights"), ("val_bpb_prequant", "EMA (pre-quant)"),
                ("val_bpb_roundtrip", "quantized"), ("val_bpb_ttt", "TTT"), ("val_bpb_ttt_ensemble", "TTT ensemble"))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def warmdown_start_step(steps: list[dict], config: dict, budget_s: float | None) -> float | None:
    """The step at which the LR warmdown began (interpolated between logged steps), or None.

    Progress is elapsed/budget under a wallclock cap and step/iterations without one, as the loop computes
    it; the warmdown starts at progress 1 - warmdown_frac."""
    train = config.get("train", {})
    frac = train.get("warmdown_frac", 0.0)
    if not frac or not steps:
        return None
    start_p = 1.0 - frac
    iterations = train.get("iterations") or 1

    def prog(r: dict) -> float:
        return r.get("elapsed_s", 0.0) / budget_s if budget_s else r["step"] / iterations

    prev = {"step": 0, "elapsed_s": 0.0}
    for r in steps:
        p0, p1 = prog(prev), prog(r)
        if p1 >= start_p:
            if p1 == p0:
                return float(r["step"])
            return prev["step"] + (r["step"] - prev["step"]) * (start_p - p0) / (p1 - p0)
        prev = r
    return None


def plot_training(run_dir: str | Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    run_dir = Path(run_dir)
    log = run_dir / "train.jsonl"
    if not log.exists():
        return None
    recs = read_jsonl(log)
    steps = [r for r in recs if r.get("event") == "step" and "loss" in r and "step" in r]
    if not steps:
        return None
    config, report = _read_json(run_dir / "config.json"), _read_json(run_dir / "report.json")
    setup = next((r for r in recs if r.get("event") == "setup"), {})
    batch_tokens = config.get("train", {}).get("train_batch_tokens")

    fig, (ax, bars) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [2.2, 1]})
    ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], color="tab:blue", label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (nats/token)", color="tab:blue")
    if batch_tokens:
        top = ax.secondary_xaxis("top", functions=(lambda s: s * batch_tokens / 1e6, lambda t: t * 1e6 / batch_tokens))
        top.set_xlabel("training tokens (millions)")

    marks = [(r["step"], f"seq {r['seq_len']}", "tab:gray") for r in recs if r.get("event") == "stage"]
    marks += [(r["step"], "looping on", "tab:purple") for r in recs if r.get("event") == "looping"]
    wd = warmdown_start_step(steps, config, setup.get("budget_s"))
    if wd is not None:
        marks.append((wd, "warmdown", "tab:orange"))
    for step, text, color in marks:
        ax.axvline(step, color=color, linestyle=":", linewidth=1)
        ax.annotate(text, (step, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -4),
                    textcoords="offset points", rotation=90, va="top", fontsize=7, color=color)

    vals = [r for r in recs if r.get("event") == "val" and "val_bpb" in r]
    periodic = [r for r in vals if r.get("tag") == "periodic"]
    ax2 = ax.twinx()
    ax2.set_ylabel("val bpb", color="tab:red")
    if periodic:
        ax2.plot([r["step"] for r in periodic], [r["val_bpb"] for r in periodic], "o-", color="tab:red",
                 markersize=4, label="val bpb (raw weights, periodic)")
    for tag, marker, label in (("pre_ema", "s", "val bpb, final raw weights"), ("post_ema", "*", "val bpb, final EMA")):
        for r in (v for v in vals if v.get("tag") == tag):
            ax2.plot([r["step"]], [r["val_bpb"]], marker, color="tab:red", markersize=9 if marker == "*" else 6,
                     label=label)
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    # Below the axes: inside, it would hide the final points at the right edge.
    ax.legend(handles, [h.get_label() for h in handles], loc="upper center", bbox_to_anchor=(0.5, -0.14),
              ncol=3, fontsize=8, frameon=False)

    stages = [(label, report[key]) for key, label in FINAL_STAGES if isinstance(report.get(key), (int, float))]
    if stages:
        names, values = zip(*stages)
        colors = ["tab:gray", "tab:blue", "tab:green", "tab:orange", "tab:red"][: len(values)]
        drawn = bars.bar(range(len(values)), values, color=colors)
        bars.bar_label(drawn, fmt="%.4f", fontsize=8)
        bars.set_xticks(range(len(values)), names, rotation=25, ha="right", fontsize=8)
        lo, hi = min(values), max(values)
        pad = max(hi - lo, 0.02) * 0.6
        bars.set_ylim(max(0.0, lo - pad), hi + pad)
        bars.set_ylabel("val bpb")
        bars.set_title("final stages", fontsize=10)
    else:
        bars.set_axis_off()
        bars.text(0.5, 0.5, "no final scores in report.json yet", ha="center", va="center", fontsize=9)

    preset = config.get("preset", "?")
    data = report.get("data_dir") or "?"
    fig.suptitle(f"{run_dir.name}: preset {preset}, data {data}", fontsize=10)
    fig.tight_layout()
    out = run_dir / "train_loss.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
