"""The submission's code: one self-contained `train_gpt.py` and its counted size (`pgolf size`).

The challenge counts the bytes of `train_gpt.py` plus the compressed model
against 16,000,000 (decimal), and the seed had only ~13 KB of headroom, so the
packed file carries just what a record run executes: train -> quantize -> eval
with TTT (`run --data DIR`, and `size`). That module set (`PACKED_MODULES`) was
found by running the tiny pipeline through a packed file and recording
`sys.modules`; data preparation, downloading, checking, the embedded corpus,
significance, audits and plots stay in the package. Asking a packed file for a
verb whose module is left out gives one line, `pgolf: error: '<verb>' is not
part of the packed submission; use the pgolf package`, because its handler is
imported lazily and the bundle's importer raises that error in its place.

Each bundled module is minified with python-minifier (docstrings, annotations
and asserts dropped, locals renamed; never globals, attributes or literal
hoisting, so names other modules import, getattr, dataclass fields and
argparse dests keep working; the CLI also loses its help texts). The bundle and
a tiny in-memory importer are compressed (brotli, lzma or zstd, whichever is
smallest: brotli so far) and written almost raw: the file declares latin-1, so
every byte but NUL, CR, "'" and backslash is one character of a str literal,
and the stream is spelled in base 252 over those (1.0028 characters per byte)
inside a two-line shim (the literal holds raw LFs, so the file has more lines):

    #coding:l1
    import brotli as B;d='''...'''.encode("l1");exec(B.decompress(<352 characters -> 351 bytes>...[:LENGTH]))

The exec'd bootstrap installs a meta-path finder that serves `pgolf.*` from the
bundle and only from it (ahead of any installed pgolf, so the file never depends on one) and runs
`pgolf.cli.main`. With no arguments it runs the `run` verb with the run's own
config (embedded) on `./data`, and never packs again (`--no-pack`); any
arguments are appended (e.g. `--data DIR --seed 1`), or replace the verb when
they start with one. Everything below the build-side marker of this file
(bundling, size table) is itself left out of the bundle, and so is the record
folder (`pgolf.record`): a packed file cannot pack.

The counted code size is the wrapper file's length in bytes, as the records
measure it (`_compressed_code_size`); `packed_size_table()` splits it by module.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pgolf.errors import ArtifactError, PgolfError

RECORD_CODE_NAME = "train_gpt.py"
LOG_SUFFIXES = (".jsonl", ".log", ".txt", ".png")


class LeftOutError(PgolfError, ImportError):
    """A packed file asked for a module it leaves out.

    A PgolfError, so a verb that needs the module fails in one line; an ImportError, so code that treats the
    module as optional (`except ImportError`, like the pipeline's audit) carries on without it.
    """


def left_out_message(verb: str) -> str:
    return f"'{verb}' is not part of the packed submission; use the pgolf package"


def _bundle_origin() -> tuple[int, str] | None:
    """(raw code bytes, path of train_gpt.py) when pgolf itself runs from a packed file."""
    import pgolf

    return getattr(pgolf, "__pgolf_bundle__", None)


def packed_code_bytes(config_json: str | None = None) -> tuple[int, int]:
    """(raw source bytes, counted bytes of train_gpt.py). From a packed file: that file's own size."""
    origin = _bundle_origin()
    if origin is not None:
        return origin[0], os.path.getsize(origin[1])
    boot, raw_bytes = build_payload(config_json)
    return raw_bytes, len(file_bytes(_wrap(boot.encode())))


# --------------------------------------------------------------------------- size accounting
def run_files(run_dir: str | Path):
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

    run, cfg, cfg_text, art = run_files(run_dir)
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


def over_cap_message(b: dict, where: str) -> str:
    return (f"{where}: over the size cap: code {b['code_bytes']:,} + model {b['model_bytes']:,} = "
            f"{b['artifact_bytes']:,} bytes > quant.size_cap_bytes {b['size_cap_bytes']:,} "
            f"(by {-b['headroom_bytes']:,})")


def cmd_size(args) -> int:
    b = size_breakdown(args.run_dir)
    print(format_breakdown(b))
    if b["headroom_bytes"] < 0:
        raise ArtifactError(over_cap_message(b, str(args.run_dir)))
    return 0


def cmd_pack(args) -> int:
    if _bundle_origin() is not None:
        raise ArtifactError(left_out_message("pack"))
    from pgolf.record import pack_record

    sizes = pack_record(args.run_dir, args.out)
    print(format_breakdown(sizes))
    print(f"record folder: {args.out} ({RECORD_CODE_NAME} {sizes['code_bytes']:,} bytes, "
          f"total {sizes['artifact_bytes']:,} of {sizes['size_cap_bytes']:,})")
    return 0


# ======================================================================== build side
# Nothing from here on is bundled (see `_bundled_pack_source`): it needs the package's files and python-minifier.
import functools  # noqa: E402
import lzma  # noqa: E402
import re  # noqa: E402

import brotli  # noqa: E402
import zstandard  # noqa: E402

# What a packed record run imports, traced: the tiny pipeline through a packed file (`--data DIR`, TTT with the
# causal and the seed ensemble, `--env`), plus `size`, `quantize --compressor lzma` and `eval --ttt`, recording
# sys.modules. pgolf.plots was imported too and is left out on purpose (the pipeline skips plotting on
# ImportError); pgolf.presets is kept so `--preset` works. tests/test_pack.py checks every pgolf import of these
# modules lands inside the set or on a left-out verb.
PACKED_MODULES = (
    "pgolf", "pgolf.attention", "pgolf.bpb", "pgolf.caseops", "pgolf.checkpoint", "pgolf.cli", "pgolf.config",
    "pgolf.data", "pgolf.distributed", "pgolf.envknobs", "pgolf.errors", "pgolf.evaluate", "pgolf.loader",
    "pgolf.model", "pgolf.optim", "pgolf.pack", "pgolf.pipeline", "pgolf.presets", "pgolf.quant",
    "pgolf.quant.artifact", "pgolf.quant.calibrate", "pgolf.quant.codecs", "pgolf.quant.gptq", "pgolf.quant.lqer",
    "pgolf.quant.mixed", "pgolf.quant.pergroup", "pgolf.quantize", "pgolf.report", "pgolf.runlog",
    "pgolf.schedule", "pgolf.shards", "pgolf.tokenizer", "pgolf.train", "pgolf.ttt", "pgolf.ttt.ensemble",
    "pgolf.ttt.global_sgd", "pgolf.ttt.lora", "pgolf.ttt.score_first",
)
# Left-out modules a bundled one imports outside any verb handler: `run` without --data reaches the corpus.
_LEFT_OUT_REACHED_BY = {"pgolf.corpus": "data prepare", "pgolf.record": "pack"}
_BUILD_SIDE_MARKER = "\n# " + "=" * 72 + " build side\n"

# python-minifier settings that keep behaviour (the PGOLF_SLOW reproduction test holds them to it): locals are
# renamed but never arguments, globals or attributes (other modules import them; getattr, dataclass fields and
# argparse dests use them by name); class attribute annotations stay (dataclass fields); literals are not hoisted
# (it made the compressed bundle larger); asserts go, as in the seed's own `pyminify --remove-asserts`.
_MINIFY_OPTIONS = dict(rename_locals=True, rename_globals=False, hoist_literals=False,
                       remove_literal_statements=True, remove_asserts=True, remove_debug=False,
                       prefer_single_line=True)

# The exec'd bootstrap. Placeholders are filled with repr() literals; keep it short, it is counted.
_BOOTSTRAP = r'''import sys,os,io,atexit,importlib.abc as A,importlib.machinery as H,importlib.resources.abc as T,tempfile
M=@M@
K=@K@
R=@R@
C=@C@
W=@W@
X=@X@
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
  if n in X:from pgolf.pack import LeftOutError as E,left_out_message as L;raise E(L(X[n]),name=n)
  if n[:6]=="pgolf.":raise ModuleNotFoundError(n,name=n)
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
def package_sources() -> tuple[dict[str, str], set[str], dict[str, dict[str, str]]]:
    """Every module's source by dotted name, the package names, and data files by package."""
    package_dir = Path(__file__).resolve().parent
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


def _bundled_pack_source(source: str) -> str:
    """pack.py as bundled: everything above the build-side marker."""
    assert source.count(_BUILD_SIDE_MARKER) == 1, "pack.py must have exactly one build-side marker"
    return source[:source.index(_BUILD_SIDE_MARKER)] + "\n"


def _without_cli_help(source: str) -> str:
    """cli.py without its help= / description= texts: a packed file's --help lists the options bare.

    They are over 40% of the minified CLI (~1.2 KB counted) and no run reads them.
    """
    import ast

    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            node.keywords = [k for k in node.keywords if k.arg not in ("help", "description")]
    return ast.unparse(tree)


def _verb_modules() -> dict[str, str]:
    """Handler module -> verb (e.g. 'pgolf.check' -> 'data check'), read off the real CLI parser."""
    import argparse

    from pgolf.cli import build_parser

    out: dict[str, str] = {}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:  # argparse keeps its subparsers only on this private action
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{prefix} {name}".strip())
        handler = parser.get_default("handler")
        if handler:
            out.setdefault(handler.split(":")[0], prefix)

    walk(build_parser(), "")
    return out


def left_out_verbs() -> dict[str, str]:
    """Module -> verb for every module a packed file refuses with `left_out_message` instead of importing."""
    out = {m: v for m, v in _verb_modules().items() if m not in PACKED_MODULES}
    out.update(_LEFT_OUT_REACHED_BY)
    return out


def bundled_sources() -> tuple[dict[str, str], set[str], dict[str, dict[str, str]]]:
    """package_sources() cut down to PACKED_MODULES (pack.py to its bundle side, presets without `_doc`)."""
    modules, packages, resources = package_sources()
    missing = sorted(set(PACKED_MODULES) - set(modules))
    assert not missing, f"PACKED_MODULES names modules that do not exist: {missing}"
    kept = {n: modules[n] for n in PACKED_MODULES}
    kept["pgolf.pack"] = _bundled_pack_source(kept["pgolf.pack"])
    res = {}
    for pkg, files in resources.items():
        if pkg in kept:
            # `load_preset` drops `_doc`; the rest round-trips through json exactly as data.
            res[pkg] = {n: json.dumps({k: v for k, v in json.loads(t).items() if k != "_doc"}, separators=(",", ":"))
                        for n, t in files.items()}
    return kept, packages & set(kept), res


@functools.lru_cache(maxsize=None)
def minify(source: str, filename: str = "<pgolf>") -> str:
    import python_minifier

    return python_minifier.minify(source, filename=filename, **_MINIFY_OPTIONS)


def _payload_parts(config_json: str | None) -> tuple[list[tuple[str, int, str]], str, int]:
    """([(module, raw bytes, minified source)], bootstrap source with the bundle inside, raw code bytes)."""
    modules, packages, resources = bundled_sources()
    raw_bytes = sum(len(s.encode()) for s in modules.values())
    raw_bytes += sum(len(t.encode()) for r in resources.values() for t in r.values())
    parts = [(name, len(src.encode()), minify(_without_cli_help(src) if name == "pgolf.cli" else src, name))
             for name, src in modules.items()]
    if config_json is not None:
        config_json = json.dumps(json.loads(config_json), separators=(",", ":"), sort_keys=True)
    values = {"M": repr({name: mini for name, _, mini in parts}), "K": repr(sorted(packages)), "R": repr(resources),
              "C": repr(config_json), "W": repr(raw_bytes), "X": repr(dict(sorted(left_out_verbs().items())))}
    # One pass over the template only: a bundled module may contain these placeholders.
    boot = re.sub(r"@([MKRCWX])@", lambda m: values[m.group(1)], _BOOTSTRAP)
    return parts, boot, raw_bytes


def build_payload(config_json: str | None = None) -> tuple[str, int]:
    """(bootstrap source with the minified bundle inside, raw code bytes before minifying)."""
    _, boot, raw_bytes = _payload_parts(config_json)
    return boot, raw_bytes


# The shim's text. The file declares latin-1 (PEP 263, `_COOKIE`), so each byte 0x01-0xFF is one character of a
# str literal and `.encode("l1")` gives the bytes back. Inside `'''...'''` only four byte values cannot stand for
# themselves: NUL (never allowed in source), CR (the tokenizer turns it into LF), "'" (could close the literal) and
# '\\' (starts an escape); LF may. Rather than escaping those (~1.2% more), the stream is written in base 252 over
# the other 252 values: 252**352 >= 256**351, so 352 characters carry 351 bytes, 1.0028 characters per byte
# (the ASCII base-123 text this replaced spent 1.154; base85 1.25). Pure Python, ~60 ms to decode 51 KB.
_COOKIE = "#coding:l1\n"  # 'l1' is latin-1's shortest codec alias; CPython 3.10-3.13 accept it in the cookie
_ALPHABET = bytes(c for c in range(1, 256) if c not in b"\r'\\")
_GROUP_BYTES, _GROUP_CHARS = 351, 352
# digit of character c: its rank in _ALPHABET (the shim's expression must agree; tests check both ways)
_DIGIT_EXPR = "c-1-(c>13)-(c>39)-(c>92)"


@functools.lru_cache(maxsize=None)
def _group_chars(num_bytes: int) -> int:
    """Fewest base-252 digits that hold any `num_bytes` bytes (a short last group needs no padding)."""
    n = 0
    while len(_ALPHABET) ** n < 256 ** num_bytes:
        n += 1
    return n


def to_text_literal(data: bytes) -> str:
    """`data` as a '''...''' literal of _ALPHABET characters, little-endian base 252, 351 bytes a group.

    The result is latin-1 text: one character per file byte.
    """
    base = len(_ALPHABET)
    assert _group_chars(_GROUP_BYTES) == _GROUP_CHARS
    out = bytearray(b"'''")
    for start in range(0, len(data), _GROUP_BYTES):
        group = data[start:start + _GROUP_BYTES]
        n = int.from_bytes(group, "little")
        for _ in range(_group_chars(len(group))):
            n, digit = divmod(n, base)
            out.append(_ALPHABET[digit])
    out += b"'''"
    return out.decode("latin-1")


def text_literal_decoder(name: str, length: int) -> str:
    """The expression that turns `name` (the literal's latin-1 bytes) back into the first `length` data bytes."""
    return (f'b"".join(sum(({_DIGIT_EXPR})*{len(_ALPHABET)}**i for i,c in enumerate({name}[j:j+{_GROUP_CHARS}]))'
            f'.to_bytes({_GROUP_BYTES},"little")for j in range(0,len({name}),{_GROUP_CHARS}))[:{length}]')


def file_bytes(code: str) -> bytes:
    """train_gpt.py's bytes for its text (`build_train_gpt`): latin-1, one byte per character, as it declares."""
    return code.encode("latin-1")


def _compress(payload: bytes, codec: str) -> bytes:
    """`payload` under a codec the shim can undo with the stdlib or a declared dependency.

    On pgolf's bundle brotli (q11) wins: 50,876 bytes against lzma 51,900 (tuned .lzma) and zstd 53,457
    (level 22), tiny config; `_wrap` tries all three on every build and keeps the smallest file.
    """
    if codec == "brotli":
        return brotli.compress(payload, quality=11, lgwin=24)
    if codec == "lzma":
        # .lzma ("alone") keeps its properties in a 13-byte header and lzma.decompress recognizes it by itself;
        # lc=3 pb=0 (byte-aligned text) is the best of lc 0-4 x pb 0/2 here.
        return lzma.compress(payload, format=lzma.FORMAT_ALONE,
                             filters=[{"id": lzma.FILTER_LZMA1, "preset": 9 | lzma.PRESET_EXTREME,
                                       "lc": 3, "lp": 0, "pb": 0, "nice_len": 273}])
    assert codec == "zstd", codec
    return zstandard.ZstdCompressor(level=22).compress(payload)


_SHIM_IMPORT = {"brotli": "import brotli as B", "lzma": "import lzma as B", "zstd": "import zstandard as B"}


def _shim(codec: str, blob: bytes) -> str:
    return (f"{_COOKIE}{_SHIM_IMPORT[codec]};d={to_text_literal(blob)}.encode(\"l1\");"
            f"exec(B.decompress({text_literal_decoder('d', len(blob))}))\n")


@functools.lru_cache(maxsize=8)
def _wrap(payload: bytes) -> str:
    """The shortest shim around `payload` (latin-1 text: its length is the file's size in bytes)."""
    return min((_shim(codec, _compress(payload, codec)) for codec in _SHIM_IMPORT), key=len)


def build_train_gpt(config_json: str | None = None) -> str:
    """The single-file submission's text (write it with `file_bytes`): the bundled package behind an exec shim.

    `config_json` (a run's config.json) becomes what the file trains with when run with no arguments.
    """
    boot, _ = build_payload(config_json)
    compile(boot, RECORD_CODE_NAME, "exec")  # a broken bundle must fail here, not in the record folder
    return _wrap(boot.encode())


# --------------------------------------------------------------------------- where the bytes go
def packed_size_rows(config_json: str | None = None) -> list[tuple[str, int, int, int]]:
    """(part, raw bytes, minified bytes, counted bytes) per bundled module, in bundle order; rows sum to the file.

    A module's counted bytes are what it adds to the compressed stream after the modules before it (the stream
    is compressed as one, so a module's cost depends on what precedes it); the codec is the one the file uses.
    """
    parts, boot, _ = _payload_parts(config_json)
    code = build_train_gpt(config_json)
    codec = next(c for c, line in _SHIM_IMPORT.items() if code.startswith(_COOKIE + line + ";"))
    total = len(file_bytes(code))
    full = len(_compress(boot.encode(), codec))

    def packed_prefix(n_chars: int) -> int:
        return len(_compress(boot[:n_chars].encode(), codec))

    pos = boot.index("\nM={") + 4
    rows = [("bootstrap (imports)", 0, pos, packed_prefix(pos))]
    done = rows[0][3]
    for name, raw, mini in parts:
        entry = f"{name!r}: {mini!r}"
        assert boot.startswith(entry, pos), f"{name}: bundle layout changed"
        pos += len(entry)
        now = packed_prefix(pos)
        rows.append((name, raw, len(mini), now - done))
        done = now
        pos += 2  # ", " between dict items
    rows.append(("bootstrap (importer), presets, config", 0, len(boot) - pos + 2, full - done))
    rows.append((f"{codec} stream as latin-1 text + shim", 0, 0, total - full))
    assert sum(r[3] for r in rows) == total
    return rows


def packed_size_table(config_json: str | None = None, rows: list | None = None) -> str:
    """`packed_size_rows` (or the `rows` given) as a table, biggest modules first, then the total and the left-out."""
    rows = rows or packed_size_rows(config_json)
    body = [rows[0]] + sorted(rows[1:-2], key=lambda r: -r[3]) + rows[-2:]
    total = ("total (train_gpt.py)", sum(r[1] for r in rows), sum(r[2] for r in rows), sum(r[3] for r in rows))
    width = max(len(r[0]) for r in body + [total])
    head = f"{'part':<{width}}  {'raw':>9}  {'minified':>9}  {'counted':>9}"
    lines = [head, "-" * len(head)]
    lines += [f"{n:<{width}}  {raw:>9,d}  {mini:>9,d}  {packed:>9,d}" for n, raw, mini, packed in body + [total]]
    modules, _, _ = package_sources()
    out = sorted(set(modules) - set(PACKED_MODULES))
    lines.append("left out: " + ", ".join(f"{n} ({len(modules[n].encode()):,})" for n in out))
    return "\n".join(lines)
