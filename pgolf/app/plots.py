"""Plots a person would rather look at than read: the training loss curve.

Reads RUN/train.jsonl (events named "step" with a "loss" field, plus "val"
events with "val_bpb") and writes RUN/train_loss.png. matplotlib is optional
(the `plot` extra); without it nothing is drawn and nothing fails.
"""

from __future__ import annotations

from pathlib import Path

from pgolf.runlog import read_jsonl


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
    steps = [(r["step"], r["loss"]) for r in recs if r.get("event") == "step" and "loss" in r and "step" in r]
    vals = [(r["step"], r["val_bpb"]) for r in recs if "val_bpb" in r and "step" in r]
    if not steps:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([s for s, _ in steps], [v for _, v in steps], label="train loss (nats/token)")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    if vals:
        ax2 = ax.twinx()
        ax2.plot([s for s, _ in vals], [v for _, v in vals], "o-", color="tab:red", label="val bpb")
        ax2.set_ylabel("val bpb")
        ax2.legend(loc="upper center")
    ax.legend(loc="upper right")
    ax.set_title(run_dir.name)
    fig.tight_layout()
    out = run_dir / "train_loss.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
