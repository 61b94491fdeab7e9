"""Structured logs: one JSONL record per event plus a readable console line.

    log = RunLog(run_dir / "train.jsonl")
    log.event("step", step=10, loss=3.21, tokens_per_s=5400.0)

Only rank 0 writes. Each record carries `event`, `t_s` (seconds since the log
was opened) and the given fields; floats are kept at full precision in JSONL
and shortened on the console.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from pgolf.distributed import is_main


def _fmt(v) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6) and math.isfinite(v):
            return f"{v:.4g}"
        return f"{v:.4f}"
    return str(v)


class RunLog:
    def __init__(self, path: str | Path | None, echo: bool = True):
        self.path = Path(path) if path is not None else None
        self.echo = echo
        self.t0 = time.perf_counter()
        self._f = None
        if self.path is not None and is_main():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a", buffering=1)

    def event(self, event: str, **fields) -> dict:
        rec = {"event": event, "t_s": round(time.perf_counter() - self.t0, 3), **fields}
        if is_main():
            if self._f is not None:
                self._f.write(json.dumps(rec, default=str) + "\n")
            if self.echo:
                body = " ".join(f"{k}:{_fmt(v)}" for k, v in fields.items())
                print(f"{event} {body}".rstrip(), file=sys.stdout, flush=True)
        return rec

    def info(self, text: str) -> None:
        """A free-form console line (also kept in the JSONL as event 'info')."""
        if is_main():
            if self._f is not None:
                self._f.write(json.dumps({"event": "info", "t_s": round(time.perf_counter() - self.t0, 3),
                                          "text": text}) + "\n")
            if self.echo:
                print(text, flush=True)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
