"""The `pgolf` command line: argparse subcommands, one handler per verb.

Every handler is in `pgolf.app.verbs`, except `run` (`pgolf.app.pipeline`); each
parses nothing itself, resolves the config through `config.resolve` and calls the
library.

A `PgolfError` (bad input) prints one line `pgolf: error: ...` and exits 2,
without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from pgolf import emulation
from pgolf.app import verbs
from pgolf.app.pipeline import cmd_run
from pgolf.errors import PgolfError
from pgolf.submission.tracks import TRACKS


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", default=[],
                   help="override one config field, e.g. --set train.matrix_lr=0.02 (repeatable)")
    p.add_argument("--env", action="store_true",
                   help="also read the seed's environment knobs (NUM_LAYERS, MATRIX_LR, TTT_LORA_RANK, ...)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pgolf", description="Parameter golf: train, quantize, pack and evaluate "
                                 "a language model under the 16 MB / 10 min rules.")
    sub = ap.add_subparsers(dest="verb", metavar="VERB", required=True)

    # ---- data
    data = sub.add_parser("data", help="prepare, download or check token shards")
    dsub = data.add_subparsers(dest="data_verb", metavar="ACTION", required=True)

    p = dsub.add_parser("prepare", help="tokenize a corpus into challenge-format shards")
    p.add_argument("--source", default="embedded",
                   help="'embedded' (stdlib docstrings, no network), a .jsonl file ({'text': ...} per line) "
                        "or a .txt file (documents separated by blank lines)")
    p.add_argument("--out", required=True, help="output data directory")
    p.add_argument("--vocab-size", type=int, default=1024, help="SentencePiece vocabulary size (default 1024)")
    p.add_argument("--val-docs", type=int, default=100,
                   help="validation = the first N documents, training = the rest (challenge: 50000)")
    p.add_argument("--caseops", dest="caseops", action="store_true", default=True,
                   help="apply the lossless CaseOps transform and write byte sidecars (default)")
    p.add_argument("--no-caseops", dest="caseops", action="store_false", help="plain SentencePiece")
    p.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard (challenge: 1e8)")
    p.add_argument("--tokenizer", default=None, help="use this SentencePiece model instead of training one")
    p.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    p.set_defaults(handler=verbs.cmd_prepare)

    p = dsub.add_parser("download", help="fetch the challenge's published shards through huggingface_hub")
    p.add_argument("--variant", default="sp8192-caseops",
                   help="sp1024 | sp4096 | sp8192 | sp8192-caseops, or the upstream name "
                        "(e.g. sp8192_lossless_caps_caseops_v1_reserved)")
    p.add_argument("--out", required=True, help="output data directory")
    p.add_argument("--train-shards", type=int, default=None,
                   help="number of training shards (default: what the variant's records used: 80 for CaseOps "
                        "and sp1024, 128 for sp4096/sp8192)")
    p.add_argument("--repo-id", default=None, help="override the dataset repository")
    p.add_argument("--local-hub", default=None,
                   help="read from a local directory laid out like the hub repository (tests, mirrors)")
    p.set_defaults(handler=verbs.cmd_download)

    p = dsub.add_parser("check", help="verify shards, sidecars, split and manifest")
    p.add_argument("dir", help="data directory")
    p.add_argument("--tokenizer", default=None, help="tokenizer model (default: the one in the manifest)")
    p.set_defaults(handler=verbs.cmd_check)

    # ---- train
    p = sub.add_parser("train", help="train a model on prepared shards")
    p.add_argument("--data", required=True, help="data directory")
    p.add_argument("--preset", default="cpu", help="record | seed | baseline | cpu | tiny")
    p.add_argument("--config", default=None, help="a config.json to use instead of --preset (e.g. a run's own)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N steps (sets train.iterations)")
    p.add_argument("--max-seconds", type=float, default=None, help="wallclock cap (sets train.max_wallclock_seconds)")
    p.add_argument("--seed", type=int, default=None, help="sets train.seed")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true", help="start over in a run directory that has results")
    _add_overrides(p)
    p.set_defaults(handler=verbs.cmd_train)

    # ---- quantize / size / pack
    p = sub.add_parser("quantize", help="GPTQ + LQER + AWQ-lite, write the compressed artifact, roundtrip-eval it")
    p.add_argument("run_dir")
    p.add_argument("--compressor", default=None, help="pergroup | brotli | lzma | zstd (default: config)")
    p.add_argument("--no-eval", action="store_true", help="skip the roundtrip evaluation")
    p.set_defaults(handler=verbs.cmd_quantize)

    p = sub.add_parser("size", help="artifact byte breakdown against the 16,000,000-byte cap")
    p.add_argument("run_dir")
    p.set_defaults(handler=verbs.cmd_size)

    p = sub.add_parser("pack", help="write a challenge record folder with a single train_gpt.py")
    p.add_argument("run_dirs", nargs="+", metavar="RUN", help="run directories: one, or several seeds of one config")
    p.add_argument("--out", required=True, help="record folder to create, e.g. records/track_10min_16mb/DATE_Name")
    p.add_argument("--author", default=None, help="submission.json author (default: git user.name)")
    p.add_argument("--github-id", default=None, help="submission.json github_id")
    p.add_argument("--name", default=None, help="submission.json name (default: the preset and techniques)")
    p.add_argument("--submitter", default=None, metavar="FILE.json",
                   help="a JSON file with author / github_id / name (flags win)")
    _add_track(p)
    _add_baseline(p)
    p.set_defaults(handler=verbs.cmd_pack)

    # ---- eval
    p = sub.add_parser("eval", help="evaluate a run's artifact: roundtrip bpb, score-first TTT, peer ensemble")
    p.add_argument("run_dir")
    p.add_argument("--data", default=None, help="data directory (default: the one the run trained on)")
    p.add_argument("--ttt", action="store_true", help="run score-first LoRA TTT")
    p.add_argument("--peer-mode", choices=["off", "causal", "pr2139"], default=None,
                   help="peer-LoRA ensemble: causal (legal, default), seed (#2139, non-compliant) or off")
    p.add_argument("--peer-k", type=int, default=None, help="ensemble size including self (1 disables)")
    p.add_argument("--dump-nll", default=None, metavar="FILE",
                   help="write per-target NLL, bytes and positions (.npy) for audits")
    p.add_argument("--prequant", action="store_true", help="evaluate the unquantized EMA weights instead")
    _add_overrides(p)
    p.set_defaults(handler=verbs.cmd_eval)

    # ---- run
    p = sub.add_parser("run", help="every stage in order: data -> train -> quantize -> TTT eval -> pack")
    p.add_argument("--source", default="embedded", help="as for `data prepare`")
    p.add_argument("--data", default=None, help="use this prepared data directory instead of preparing one")
    p.add_argument("--preset", default=None, help="default: cpu without a GPU, seed with 8 GPUs")
    p.add_argument("--config", default=None, help="a config.json to use instead of --preset")
    p.add_argument("--no-pack", action="store_true", help="skip writing the record folder")
    p.add_argument("--out", default="out/run", help="run directory")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--peer-mode", choices=["off", "causal", "pr2139"], default=None,
                   help="peer-LoRA ensemble mode (sets ttt.peer_mode)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    _add_overrides(p)
    p.set_defaults(handler=cmd_run)

    # ---- significance
    p = sub.add_parser("significance", help="Welch t-test of per-seed bpb against a baseline (the README's bar: "
                       ">= 0.005 nats at p < 0.01), with the maintainers' paired test beside it")
    p.add_argument("candidate", nargs="+", help="the candidate's seeds: bpb numbers, runs (report.json), record "
                   "folders (pgolf's or upstream) or text logs")
    p.add_argument("--baseline", nargs="+", required=True, help="the same kinds of inputs, for the baseline")
    p.add_argument("--min-delta-nats", type=float, default=0.005)
    p.set_defaults(handler=verbs.cmd_significance)

    # ---- audit
    p = sub.add_parser("audit", help="check runs and record folders against the rules: size, time, legality, "
                       "data, consistency, artifact")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="run directories and/or record folders (pgolf's, or upstream ones with text logs)")
    p.add_argument("--strict", action="store_true", help="also exit non-zero on WARN (missing evidence)")
    p.add_argument("--json", action="store_true", help="print the checks as JSON instead of a table")
    _add_baseline(p)
    p.set_defaults(handler=verbs.cmd_audit)

    # ---- preset
    preset = sub.add_parser("preset", help="make and inspect configs")
    add_preset_verbs(preset.add_subparsers(dest="preset_verb", metavar="ACTION", required=True))
    return ap


def add_preset_verbs(psub) -> None:
    """The `pgolf preset ACTION` group; each action adds its parser here."""
    p = psub.add_parser("show", help="print a preset's resolved config as JSON (defaults + preset + overrides)")
    p.add_argument("name", help="a preset name (record, seed, pr2135, cpu, ...) or a config.json path")
    _add_overrides(p)
    p.set_defaults(handler=verbs.cmd_preset_show)
    p = psub.add_parser("from-log", help="a record log's hyperparameter block -> a config.json for --config")
    p.add_argument("log", help="a record's text log (train_seed<N>.log, upstream or pgolf-made)")
    p.add_argument("--out", required=True, metavar="FILE.json", help="the config to write")
    p.add_argument("--preset", default="seed",
                   help="what fields the log does not set start from (default: seed, #2139's defaults)")
    p.set_defaults(handler=verbs.cmd_preset_from_log)


def _add_track(p: argparse.ArgumentParser) -> None:
    p.add_argument("--track", default=None, choices=sorted(TRACKS),
                   help="the track the record is for (default: the records/track_* folder --out is in, else "
                        "the config: a 16 MB cap with a 600 s clock is 10min_16mb, no clock is non_record_unlimited, "
                        "anything else non_record_16mb)")


def _add_baseline(p: argparse.ArgumentParser) -> None:
    p.add_argument("--baseline", nargs="+", default=None, metavar="PATH",
                   help="compare with this baseline (a record folder, logs, runs or bpb numbers): delta in nats, "
                        "p-value, the README's bar (0.005 nats at p < 0.01) and the tests used")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        emulation.activate_from_env()  # PGOLF_EMULATE=cuda: every verb runs the CUDA policy on CPU
        rc = args.handler(args)
    except PgolfError as e:
        print(f"pgolf: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pgolf: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    raise SystemExit(main())
