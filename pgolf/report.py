"""`report.json`: the one place a verb's results land, merged across verbs.

Each verb calls `update_report(run_dir, {...})`. Keys are flat figures with
units in their names (`val_bpb`, `train_seconds`, `artifact_bytes`), plus
`config` (the resolved RunConfig), `data_manifest_sha256` and
`phase_seconds` (a dict merged across verbs).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pgolf.distributed import is_main

REPORT_NAME = "report.json"


def read_report(run_dir: str | Path) -> dict[str, Any]:
    p = Path(run_dir) / REPORT_NAME
    if not p.exists():
        return {}
    with open(p) as f:
        return json.load(f)


def update_report(run_dir: str | Path, fields: dict[str, Any]) -> dict[str, Any]:
    """Merge `fields` into RUN_DIR/report.json (phase_seconds merged key by key); rank 0 writes."""
    rep = read_report(run_dir)
    for k, v in fields.items():
        if k == "phase_seconds" and isinstance(v, dict):
            rep.setdefault("phase_seconds", {}).update(v)
        else:
            rep[k] = v
    if is_main():
        p = Path(run_dir) / REPORT_NAME
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".json.tmp")
        with open(tmp, "w") as f:
            json.dump(rep, f, indent=2, sort_keys=True, default=str)
        os.replace(tmp, p)
    return rep


def recorded_data_dir(run_dir: str | Path, given: str | Path | None = None) -> Path:
    """The data directory to evaluate on: `given`, else the one the run trained on (report.json)."""
    from pgolf.errors import ConfigError, DataError

    if given:
        return Path(given)
    recorded = read_report(run_dir).get("data_dir")
    if not recorded:
        raise ConfigError(f"{Path(run_dir) / REPORT_NAME}: no data_dir recorded; pass --data DIR")
    if not Path(recorded).is_dir():
        raise DataError(f"{recorded}: the run's data directory is gone; pass --data DIR")
    return Path(recorded)


def write_config(run_dir: str | Path, config) -> None:
    """Dump the resolved config as RUN_DIR/config.json."""
    if is_main():
        p = Path(run_dir) / "config.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(config.to_json() + "\n")
