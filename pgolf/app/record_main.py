"""What a packed train_gpt.py runs: the record run, with the config the file carries.

    python train_gpt.py [--data DIR] [--out RUN] [--seed N] [--set SECTION.FIELD=VALUE ...] [--overwrite]

The config embedded at pack time is the base, without its seed: like the challenge's records, the
file is the same for every seed and `--seed` picks one (default: the config default, 42). `--seed` and
`--set` go through the same `config.resolve` as every pgolf verb. The data directory must already be
prepared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from pgolf.config import RunConfig, resolve
from pgolf.distributed import cleanup, init_distributed, is_main
from pgolf.errors import ConfigError, PgolfError
from pgolf.record_run import record_run
from pgolf.rundir import RunDir
from pgolf.train import clear_results


def main(argv: list[str], config_json: str, code_bytes: tuple[int, int]) -> int:
    """Run the record; `code_bytes` is (raw source bytes, the packed file's own size)."""
    p = argparse.ArgumentParser(prog="train_gpt.py", description="train, quantize and evaluate this record")
    p.add_argument("--data", default="data", help="prepared data directory")
    p.add_argument("--out", default="run", help="run directory")
    p.add_argument("--seed", type=int, default=None, help="sets train.seed")
    p.add_argument("--set", action="append", default=[], help="SECTION.FIELD=VALUE (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    args = p.parse_args(argv)
    try:
        cfg = resolve(RunConfig.from_dict(json.loads(config_json)), sets=args.set,
                      flags={"train.seed": args.seed})
        init_distributed()
        run = RunDir(args.out)
        if not os.path.isdir(args.data):
            raise ConfigError(f"{args.data}: data directory not found (prepare it with pgolf, or pass --data DIR)")
        clear_results(run, resume=False, overwrite=args.overwrite)
        report = record_run(cfg, args.data, run, code_bytes=code_bytes, checkpoints=False)
        headline = report.headline()
        if is_main() and headline is not None:
            # The stage lines above carry every figure; this is the one a record reports.
            print(f"score {headline[0]}:{headline[1]:.8f} artifact_bytes:{report.artifact_bytes}")
    except PgolfError as e:
        print(f"pgolf: error: {e}", file=sys.stderr)
        return 2
    finally:
        cleanup()
    return 0
