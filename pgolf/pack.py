"""The submission: one self-contained `train_gpt.py`, its counted size, and the record folder.

The challenge counts the bytes of `train_gpt.py` plus the compressed model
against 16,000,000 (decimal). pgolf keeps its source readable and lets this
module pay for that: every module of the package (and the preset JSONs) is
minified with python-minifier (safe options: no renaming, no literal hoisting;
docstrings dropped), bundled with a tiny in-memory importer, compressed with
lzma or brotli (whichever is smaller) and base85-wrapped in a two-line shim:

    import lzma as L,base64 as b
    exec(L.decompress(b.b85decode("...")))

The exec'd bootstrap installs a meta-path finder that serves `pgolf.*` from the
bundle (ahead of any installed pgolf, so the file never depends on one) and runs
`pgolf.cli.main`. With no arguments it runs the `run` verb with the run's own
config (embedded), on `./data` when that folder exists and on the embedded
corpus otherwise, and never packs again (`--no-pack`); any arguments are
appended (e.g. `--data DIR --seed 1`), or replace the verb when they start with one.

The counted code size is the wrapper file's length in bytes, as the records
measure it (`_compressed_code_size`).
"""

from __future__ import annotations

import base64
import datetime as _dt
import functools
import importlib.metadata
import json
import lzma
import os
import re
import shutil
import subprocess
from pathlib import Path

import brotli

from pgolf.errors import ArtifactError

RECORD_CODE_NAME = "train_gpt.py"
LOG_SUFFIXES = (".jsonl", ".log", ".txt", ".png")

# python-minifier settings that keep behaviour: names are never renamed (getattr by
# name, dataclass fields, argparse dests keep working) and literals are not hoisted.
_MINIFY_OPTIONS = dict(rename_locals=False, rename_globals=False, hoist_literals=False,
                       remove_literal_statements=True, remove_asserts=False, remove_debug=False,
                       prefer_single_line=True)

# The exec'd bootstrap. Placeholders are filled with repr() literals; keep it short, it is counted.
_BOOTSTRAP = r'''import sys,os,io,atexit,importlib.abc as A,importlib.machinery as H,importlib.resources.abc as T,tempfile
M=@M@
K=@K@
R=@R@
C=@C@
W=@W@
P=os.path.abspath(globals().get("__file__","train_gpt.py"))
class _T(T.Traversable):
 def __init__(s,p,n=None):s.p,s.n=p,n
 @property
 def name(s):return s.n or s.p.rsplit(".",1)[-1]
 def iterdir(s):return iter([_T(s.p,n) for n in R.get(s.p,{})] if s.n is None else [])
 def is_dir(s):return s.n is None
 def is_file(s):return s.n in R.get(s.p,{})
 def joinpath(s,*a):return _T(s.p,"/".join(a))
 def __truediv__(s,o):return s.joinpath(o)
 def open(s,mode="r",*a,**k):
  if not s.is_file():raise FileNotFoundError(f"{s.p}/{s.n}")
  d=R[s.p][s.n];return io.BytesIO(d.encode()) if "b" in mode else io.StringIO(d)
class _R:
 def __init__(s,n):s.n=n
 def files(s):return _T(s.n)
class _F(A.MetaPathFinder,A.Loader):
 def find_spec(s,n,p=None,t=None):
  if n in M:return H.ModuleSpec(n,s,origin=P+"/"+n.replace(".","/")+".py",is_package=n in K)
 def create_module(s,spec):return None
 def exec_module(s,m):
  n=m.__name__
  if n=="pgolf":m.__pgolf_bundle__=(W,P)
  exec(compile(M[n],m.__spec__.origin,"exec"),m.__dict__)
 def get_source(s,n):return M.get(n)
 def get_resource_reader(s,n):return _R(n)
sys.meta_path.insert(0,_F())
if __name__=="__main__":
 a=sys.argv[1:]
 if not a or a[0].startswith("-"):
  d=["run","--out","run","--no-pack"]+(["--data","data"] if os.path.isdir("data") else [])
  if C is not None:
   f,c=tempfile.mkstemp(prefix="train_gpt_config_",suffix=".json");os.write(f,C.encode());os.close(f);d+=["--config",c];atexit.register(os.remove,c)
  a=d+a
 from pgolf.cli import main
 raise SystemExit(main(a))
'''


# --------------------------------------------------------------------------- building the file
def _bundle_origin() -> tuple[int, str] | None:
    """(raw code bytes, path of train_gpt.py) when pgolf itself runs from a packed file."""
    import pgolf

    return getattr(pgolf, "__pgolf_bundle__", None)


def package_sources() -> tuple[dict[str, str], set[str], dict[str, dict[str, str]]]:
    """Every module's source by dotted name, the package names, and data files by package."""
    if _bundle_origin() is not None:
        raise ArtifactError("pgolf is running from a packed train_gpt.py; pack from an installed pgolf")
    package_dir = Path(__file__).resolve().parent  # only read here: a packed file has no __file__
    modules: dict[str, str] = {}
    packages: set[str] = set()
    resources: dict[str, dict[str, str]] = {}
    for path in sorted(package_dir.rglob("*")):
        rel = path.relative_to(package_dir.parent)
        if "__pycache__" in rel.parts or not path.is_file():
            continue
        dotted = ".".join(rel.parent.parts)
        if path.suffix == ".py":
            if path.name == "__init__.py":
                packages.add(dotted)
                modules[dotted] = path.read_text()
            elif path.name != "__main__.py":
                modules[f"{dotted}.{path.stem}"] = path.read_text()
        elif path.suffix == ".json":
            resources.setdefault(dotted, {})[path.name] = path.read_text()
    return modules, packages, resources


@functools.lru_cache(maxsize=None)
def minify(source: str, filename: str = "<pgolf>") -> str:
    import python_minifier

    return python_minifier.minify(source, filename=filename, **_MINIFY_OPTIONS)


@functools.lru_cache(maxsize=8)
def _wrap(payload: bytes) -> str:
    """The smaller of the lzma and brotli shims around `payload`."""
    shims = []
    xz = lzma.compress(payload, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)
    shims.append("import lzma as L,base64 as b\nexec(L.decompress(b.b85decode(\"" +
                 base64.b85encode(xz).decode() + "\")))\n")
    br = brotli.compress(payload, quality=11, lgwin=24)
    shims.append("import brotli as B,base64 as b\nexec(B.decompress(b.b85decode(\"" +
                 base64.b85encode(br).decode() + "\")))\n")
    return min(shims, key=len)


def build_payload(config_json: str | None = None) -> tuple[str, int]:
    """(bootstrap source with the minified bundle inside, raw code bytes before minifying)."""
    modules, packages, resources = package_sources()
    raw_bytes = sum(len(s.encode()) for s in modules.values())
    raw_bytes += sum(len(t.encode()) for r in resources.values() for t in r.values())
    mini = {name: minify(src, name) for name, src in modules.items()}
    if config_json is not None:
        config_json = json.dumps(json.loads(config_json), separators=(",", ":"), sort_keys=True)
    # Resources are stored compact too; json round-trips them exactly as data.
    res = {pkg: {n: json.dumps(json.loads(t), separators=(",", ":")) for n, t in files.items()}
           for pkg, files in resources.items()}
    values = {"M": repr(mini), "K": repr(sorted(packages)), "R": repr(res), "C": repr(config_json),
              "W": repr(raw_bytes)}
    # One pass over the template only: the bundled pack.py itself contains these placeholders.
    boot = re.sub(r"@([MKRCW])@", lambda m: values[m.group(1)], _BOOTSTRAP)
    return boot, raw_bytes


def build_train_gpt(config_json: str | None = None) -> str:
    """The single-file submission: the bundled package behind an exec shim.

    `config_json` (a run's config.json) becomes what the file trains with when run with no arguments.
    """
    boot, _ = build_payload(config_json)
    compile(boot, RECORD_CODE_NAME, "exec")  # a broken bundle must fail here, not in the record folder
    return _wrap(boot.encode())


def packed_code_bytes(config_json: str | None = None) -> tuple[int, int]:
    """(raw source bytes, counted bytes of train_gpt.py). From a packed file: that file's own size."""
    origin = _bundle_origin()
    if origin is not None:
        return origin[0], os.path.getsize(origin[1])
    boot, raw_bytes = build_payload(config_json)
    return raw_bytes, len(_wrap(boot.encode()).encode())


# --------------------------------------------------------------------------- size accounting
def _run_files(run_dir: str | Path):
    """(run dir, RunConfig, config.json text, artifact path) with clear errors for missing pieces."""
    from pgolf.config import RunConfig
    from pgolf.quantize import ARTIFACT_NAME

    run = Path(run_dir)
    cfg_path = run / "config.json"
    if not cfg_path.exists():
        raise ArtifactError(f"{cfg_path}: not found (is {run} a run directory?)")
    text = cfg_path.read_text()
    cfg = RunConfig.from_dict(json.loads(text))
    art = run / ARTIFACT_NAME
    if not art.exists():
        raise ArtifactError(f"{art}: not found; run `pgolf quantize {run}` first")
    return run, cfg, text, art


def size_breakdown(run_dir: str | Path) -> dict:
    """Code (raw / packed), every artifact stream, model bytes, total and headroom against the cap."""
    from pgolf.quant.artifact import read_header

    run, cfg, cfg_text, art = _run_files(run_dir)
    header = read_header(art)
    code_raw, code_bytes = packed_code_bytes(cfg_text)
    model_bytes = os.path.getsize(art)
    streams = {s["name"]: int(s["bytes"]) for s in header["streams"]}
    total = code_bytes + model_bytes
    return {
        "artifact": str(art),
        "code_raw_bytes": code_raw,
        "code_bytes": code_bytes,
        "streams": streams,
        "coders": {s["name"]: s["coder"] for s in header["streams"]},
        "container_overhead_bytes": model_bytes - sum(streams.values()),
        "model_bytes": model_bytes,
        "artifact_bytes": total,
        "size_cap_bytes": cfg.quant.size_cap_bytes,
        "headroom_bytes": cfg.quant.size_cap_bytes - total,
    }


def format_breakdown(b: dict) -> str:
    rows = [("code (raw source)", b["code_raw_bytes"]), ("code (packed train_gpt.py)", b["code_bytes"])]
    rows += [(f"  stream {n} [{b['coders'][n]}]", v) for n, v in b["streams"].items()]
    rows += [("  container (magic, header, checksum)", b["container_overhead_bytes"]),
             ("model (artifact file)", b["model_bytes"]), ("total (code + model)", b["artifact_bytes"]),
             ("cap", b["size_cap_bytes"]), ("headroom", b["headroom_bytes"])]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{k:<{width}}  {v:>12,d}" for k, v in rows)


def _over_cap_message(b: dict, where: str) -> str:
    return (f"{where}: over the size cap: code {b['code_bytes']:,} + model {b['model_bytes']:,} = "
            f"{b['artifact_bytes']:,} bytes > quant.size_cap_bytes {b['size_cap_bytes']:,} "
            f"(by {-b['headroom_bytes']:,})")


def cmd_size(args) -> int:
    b = size_breakdown(args.run_dir)
    print(format_breakdown(b))
    if b["headroom_bytes"] < 0:
        raise ArtifactError(_over_cap_message(b, str(args.run_dir)))
    return 0


# --------------------------------------------------------------------------- record folder
_FINAL_BPB_KEYS = ("val_bpb_ttt_ensemble", "val_bpb_ttt", "val_bpb_roundtrip")


def final_result(report: dict) -> tuple[str, float] | None:
    """The headline (key, bpb): the last legal stage the run reached (a non-compliant ensemble is skipped)."""
    for key in _FINAL_BPB_KEYS:
        if key == "val_bpb_ttt_ensemble" and report.get("peer_compliant") is False:
            continue
        if isinstance(report.get(key), (int, float)):
            return key, float(report[key])
    return None


def _author() -> str:
    try:
        out = subprocess.run(["git", "config", "user.name"], capture_output=True, text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    import getpass

    return getpass.getuser()


def _describe(cfg) -> str:
    m, q, t = cfg.model, cfg.quant, cfg.ttt
    parts = [f"{m.num_layers}L {m.model_dim}d {m.num_heads}H/{m.num_kv_heads}KV, vocab {m.vocab_size}"]
    if m.num_loops:
        parts.append(f"layers {m.loop_start}-{m.loop_end} looped x{m.num_loops + 1}")
    parts.append(f"GPTQ int{q.matrix_bits} (embed int{q.embed_bits})")
    if q.lqer_enabled:
        parts.append(f"LQER rank {q.lqer_rank} top-{q.lqer_top_k}")
    if q.awq_enabled:
        parts.append("AWQ-lite")
    parts.append(f"{q.compressor} compression")
    if t.enabled:
        parts.append(f"score-first LoRA TTT r{t.lora_rank}" + (f", peer ensemble ({t.peer_mode}, k={t.peer_k})"
                                                              if t.peer_mode != "off" and t.peer_k > 1 else ""))
    return ", ".join(parts)


def build_submission(report: dict, cfg, sizes: dict) -> dict:
    """submission.json as the challenge's records lay it out, every value taken from the run."""
    import pgolf

    final = final_result(report)
    seed = cfg.train.seed
    track = ("10min_16mb" if cfg.quant.size_cap_bytes == 16_000_000 and cfg.train.max_wallclock_seconds == 600
             else "non_record")
    sub: dict = {
        "author": report.get("author") or _author(),
        "github_id": report.get("github_id"),
        "name": f"pgolf {cfg.preset}: {_describe(cfg)}",
        "blurb": (f"Generated by pgolf {pgolf.__version__} from run report; {_describe(cfg)}. "
                  f"Headline metric: {final[0] if final else 'none'}."),
        "date": report.get("date") or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"),
        "track": track,
    }
    if final is not None:
        loss_key = final[0].replace("bpb", "loss")
        if isinstance(report.get(loss_key), (int, float)):
            sub["val_loss"] = report[loss_key]
        sub["val_bpb"] = final[1]
    sub.update(bytes_total=sizes["artifact_bytes"], bytes_code=sizes["code_bytes"], bytes_model=sizes["model_bytes"])
    sub["seeds"] = [seed]
    # As in the records: val_bpb / val_loss are the headline; the stage figures follow.
    per_seed = {k: sub[k] for k in ("val_loss", "val_bpb") if k in sub}
    per_seed.update({k: report[k] for k in ("val_bpb_prequant", "val_bpb_roundtrip", "val_bpb_ttt",
                                            "val_bpb_ttt_ensemble", "steps", "train_seconds", "quant_seconds",
                                            "eval_seconds") if k in report})
    if "val_bpb_prequant" not in per_seed and isinstance(report.get("val_bpb"), (int, float)):
        per_seed["val_bpb_prequant"] = report["val_bpb"]  # train's own key for the EMA model
    per_seed["artifact_bytes"] = sizes["artifact_bytes"]
    sub["seed_results"] = {str(seed): per_seed}
    for k in ("val_bpb_prequant", "val_bpb_roundtrip", "peer_mode", "peer_compliant", "hardware", "device",
              "torch_version"):
        if k in report:
            sub[k] = report[k]
    sub["pgolf_version"] = pgolf.__version__
    return {k: v for k, v in sub.items() if v is not None}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.5f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,d}"
    return str(v)


def build_readme(sub: dict, sizes: dict, cfg, logs: list[str]) -> str:
    """README.md for the record folder: what ran, what it scored, what it weighs, how to rerun it."""
    lines = [f"# {sub['name']}", "", sub["blurb"], "", "## Results (seed " + str(sub["seeds"][0]) + ")", "",
             "| metric | value |", "|---|---|"]
    for k, v in sub["seed_results"][str(sub["seeds"][0])].items():
        lines.append(f"| {k} | {_fmt(v)} |")
    lines += ["", "## Size (bytes, decimal cap)", "", "| part | bytes |", "|---|---|",
              f"| train_gpt.py (packed; raw source {sizes['code_raw_bytes']:,}) | {sizes['code_bytes']:,} |"]
    lines += [f"| model stream `{n}` ({sizes['coders'][n]}) | {v:,} |" for n, v in sizes["streams"].items()]
    lines += [f"| container overhead | {sizes['container_overhead_bytes']:,} |",
              f"| **total** | **{sizes['artifact_bytes']:,}** |",
              f"| cap / headroom | {sizes['size_cap_bytes']:,} / {sizes['headroom_bytes']:,} |", ""]
    if sub.get("peer_compliant") is False:
        lines += ["**Note:** the peer ensemble ran in `seed` mode, which is not compliant; the headline "
                  "metric above excludes it.", ""]
    lines += ["## Reproduce", "",
              "Needs only the third-party packages in `requirements.txt` (not pgolf). From this folder:", "",
              "    pip install -r requirements.txt",
              "    python train_gpt.py                 # config.json's settings, ./data if present",
              "    python train_gpt.py --data DIR      # challenge shards (data/ layout of pgolf)", "",
              "The run writes `run/` (logs, artifact, report.json). Any pgolf verb also works, e.g. "
              "`python train_gpt.py eval run --ttt`.", "",
              "## Files", "", "- `train_gpt.py`: the whole pgolf package, minified, compressed and wrapped",
              "- `config.json`: the resolved configuration of this run", "- `submission.json`, `README.md`",
              "- `requirements.txt`"]
    lines += [f"- `{n}`" for n in logs]
    return "\n".join(lines) + "\n"


def _requirements() -> str:
    try:
        reqs = [r for r in importlib.metadata.requires("pgolf") or [] if "extra ==" not in r]
    except importlib.metadata.PackageNotFoundError:
        reqs = []
    skip = ("python-minifier", "tqdm", "huggingface_hub")  # packing, progress bars, downloads only
    return "\n".join(["torch"] + [r for r in reqs if not r.startswith(skip)]) + "\n"


def pack_record(run_dir: str | Path, out_dir: str | Path) -> dict:
    """Write the record folder; returns the size breakdown. Refuses (ArtifactError) when over the cap."""
    from pgolf.report import read_report

    run, cfg, cfg_text, art = _run_files(run_dir)
    code = build_train_gpt(cfg_text)
    sizes = size_breakdown(run)
    assert sizes["code_bytes"] == len(code.encode()), "the counted size must be the file we write"
    if sizes["headroom_bytes"] < 0:
        raise ArtifactError(_over_cap_message(sizes, f"pack {run}"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / RECORD_CODE_NAME).write_text(code)
    (out / "config.json").write_text(cfg_text)
    (out / "requirements.txt").write_text(_requirements())
    logs = []
    for p in sorted(run.iterdir()):
        if p.is_file() and (p.suffix in LOG_SUFFIXES or p.name == "report.json"):
            shutil.copy2(p, out / p.name)
            logs.append(p.name)
    report = read_report(run)
    sub = build_submission(report, cfg, sizes)
    (out / "submission.json").write_text(json.dumps(sub, indent=2) + "\n")
    (out / "README.md").write_text(build_readme(sub, sizes, cfg, logs))
    return sizes


def cmd_pack(args) -> int:
    sizes = pack_record(args.run_dir, args.out)
    print(format_breakdown(sizes))
    print(f"record folder: {args.out} ({RECORD_CODE_NAME} {sizes['code_bytes']:,} bytes, "
          f"total {sizes['artifact_bytes']:,} of {sizes['size_cap_bytes']:,})")
    return 0
