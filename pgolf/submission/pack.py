"""The submission's code: one self-contained `train_gpt.py` and its counted size (`pgolf size`).

The challenge counts the bytes of `train_gpt.py` plus the compressed model against
16,000,000 (decimal), so the packed file carries exactly what a record run executes:
the library (`pgolf/` without `pgolf/app/` and `pgolf/submission/`) reached from one
entry, `pgolf.app.record_main` (train -> quantize -> TTT eval, in one process). The
bundle is that entry's import closure, read statically from the sources
(`bundled_modules`): with every import at the top of its module, the closure is
exactly what runs. Data preparation, downloads, checks, the CLI, plots and this
submission tooling are outside it, and a packed file that asks for them gets
`ModuleNotFoundError`.

Each bundled module is minified with python-minifier (docstrings, annotations and
asserts dropped, locals renamed; never globals, attributes or literal hoisting, so
names other modules import, getattr, dataclass fields and argparse dests keep
working; the entry also loses its help texts). The bundle and a tiny in-memory
importer are compressed (brotli, lzma or zstd, whichever is smallest) and written
almost raw: the file declares latin-1, so every byte but NUL, CR, "'" and backslash
is one character of a str literal, and the stream is spelled in base 252 over
those (1.0028 characters per byte) inside a two-line shim:

    #coding:l1
    import brotli as B;d='''...'''.encode("l1");exec(B.decompress(<352 characters -> 351 bytes>...[:LENGTH]))

The exec'd bootstrap installs a meta-path finder that serves `pgolf.*` from the
bundle and only from it (ahead of any installed pgolf, so the file never depends on
one) and calls the entry with the run's own config (embedded) and the file's own
size, which is the counted code size, as the records measure it.
"""

from __future__ import annotations

import ast
import functools
import json
import lzma
import os
import re
from pathlib import Path

import brotli
import zstandard

from pgolf.config import RunConfig, flatten, nest
from pgolf.quant.artifact import read_header
from pgolf.rundir import RunDir
from pgolf.submission.significance import SEED_FIELDS
from pgolf.ttt.peer_modes import PEER_MODES

RECORD_CODE_NAME = "train_gpt.py"
LOG_SUFFIXES = (".jsonl", ".log", ".txt", ".png")
ENTRY = "pgolf.app.record_main"
"""The one module a packed file runs; the bundle is what it imports."""


def packed_code_bytes(config_json: str | None = None) -> tuple[int, int]:
    """(raw source bytes, counted bytes of the train_gpt.py this package packs with `config_json`)."""
    boot, raw_bytes = build_payload(config_json)
    return raw_bytes, len(file_bytes(_wrap(boot.encode())))


# --------------------------------------------------------------------------- size accounting
def run_files(run_dir: str | Path):
    """(run dir, RunConfig, config.json text, artifact path) with clear errors for missing pieces."""
    run = RunDir(run_dir)
    text = run.require(run.config, f"is {run.path} a run directory?").read_text()
    cfg = RunConfig.from_dict(json.loads(text))
    art = run.require(run.artifact, f"run `pgolf quantize {run.path}` first")
    return run.path, cfg, text, art


def size_breakdown(run_dir: str | Path) -> dict:
    """Code (raw / packed), every artifact stream, model bytes, total and headroom against the cap."""
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


# --------------------------------------------------------------------------- what goes in the bundle
# python-minifier settings that keep behaviour (the PGOLF_SLOW reproduction test holds them to it): locals are
# renamed but never arguments, globals or attributes (other modules import them; getattr, dataclass fields and
# argparse dests use them by name); class attribute annotations stay (dataclass fields); literals are not hoisted
# (it made the compressed bundle larger); asserts go, as in the seed's own `pyminify --remove-asserts`.
_MINIFY_OPTIONS = dict(rename_locals=True, rename_globals=False, hoist_literals=False,
                       remove_literal_statements=True, remove_asserts=True, remove_debug=False,
                       prefer_single_line=False)  # one statement per line compresses 39 bytes smaller

# The exec'd bootstrap. Placeholders are filled with repr() literals; keep it short, it is counted.
_BOOTSTRAP = r'''import sys,os,importlib.abc as A,importlib.machinery as H
M=dict(x.split("\1",1)for x in t.split("\0")[1:])
K=@K@
C=@C@
W=@W@
P=os.path.abspath(globals().get("__file__","train_gpt.py"))
class _F(A.MetaPathFinder,A.Loader):
 def find_spec(s,n,p=None,t=None):
  if n in M:return H.ModuleSpec(n,s,origin=P+"/"+n.replace(".","/")+".py",is_package=n in K)
  if n[:6]=="pgolf.":raise ModuleNotFoundError(n,name=n)
 def create_module(s,spec):return None
 def exec_module(s,m):exec(compile(M[m.__name__],m.__spec__.origin,"exec"),m.__dict__)
 def get_source(s,n):return M.get(n)
sys.meta_path.insert(0,_F())
if __name__=="__main__":
 from pgolf.app.record_main import main
 raise SystemExit(main(sys.argv[1:],C,(W,os.path.getsize(P))))
'''


def package_sources() -> dict[str, str]:
    """Every module's source by dotted name (packages by their own name)."""
    package_dir = Path(__file__).resolve().parents[1]
    modules: dict[str, str] = {}
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir.parent)
        if "__pycache__" in rel.parts or path.name == "__main__.py":
            continue
        dotted = ".".join(rel.parent.parts) if path.name == "__init__.py" else ".".join(rel.with_suffix("").parts)
        modules[dotted] = path.read_text()
    return modules


def _runtime_nodes(tree: ast.AST):
    """Every node, except those under `if TYPE_CHECKING:`: type-only imports never run, so never need bundling."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", getattr(child.test, "attr", "")) == "TYPE_CHECKING":
                todo += child.orelse
            else:
                todo.append(child)


def imported_modules(source: str, modules: dict[str, str]) -> set[str]:
    """The pgolf modules `source` imports anywhere (`import pgolf.x`, `from pgolf.x import y`, `from pgolf import x`)."""
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module in modules:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules)
    return found


def config_modules(config_json: str | None = None) -> list[str]:
    """The modules that a run of this config (default: `RunConfig()`) imports by name rather than statically:
    its TTT peer mode's, the n-gram tilt when it is on (and `pgolf.ngram_orders` for its `stream` order), the
    sliding evaluation when it has a stride. (Training state, `pgolf.train_state`, is never needed: a packed
    record keeps no checkpoints.) Other configs' choices stay out of its file."""
    cfg = RunConfig.from_dict(json.loads(config_json)) if config_json is not None else RunConfig()
    return ([PEER_MODES[cfg.ttt.peer_mode].split(":")[0]] + (["pgolf.ngram_tilt"] if cfg.eval.tilted else [])
            + (["pgolf.ngram_orders"] if cfg.eval.ngram_tilt == "stream" else [])
            + (["pgolf.sliding_eval"] if cfg.eval.sliding_stride > 0 else []))


def bundled_modules(modules: dict[str, str] | None = None, config_json: str | None = None) -> list[str]:
    """The import closure of the entry and of the config's `config_modules`, plus every package on the way to
    each module, sorted."""
    modules = modules if modules is not None else package_sources()
    todo, seen = [ENTRY, *config_modules(config_json)], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # importing a.b.c runs a and a.b first
        todo += sorted(imported_modules(modules[name], modules) - seen)
    return sorted(seen)


def _without_help(source: str) -> str:
    """The entry without its help= / description= texts: a packed file's --help lists the options bare."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            node.keywords = [k for k in node.keywords if k.arg not in ("help", "description")]
    return ast.unparse(tree)


@functools.lru_cache(maxsize=None)
def minify(source: str, filename: str = "<pgolf>") -> str:
    import python_minifier  # the packer's own tool; nothing else in pgolf needs it

    return python_minifier.minify(source, filename=filename, **_MINIFY_OPTIONS)


def config_delta(config_json: str) -> dict:
    """The fields of a config that differ from RunConfig's defaults, nested: what the packed file embeds
    (about half the bytes of the whole config); `RunConfig.from_dict` fills in the rest.

    The seed fields are left out, as the challenge's records leave SEED to the command line: every seed
    of one configuration gets the same file (and the same counted bytes); `--seed N` picks the seed."""
    defaults = flatten(json.loads(RunConfig().to_json()))
    return nest({k: v for k, v in flatten(json.loads(config_json)).items()
                 if defaults.get(k, ...) != v and k not in SEED_FIELDS})


def _payload_parts(config_json: str | None) -> tuple[list[tuple[str, int, str]], str, int]:
    """([(module, raw bytes, minified source)], bootstrap source with the bundle inside, raw code bytes)."""
    sources = package_sources()
    names = bundled_modules(sources, config_json)
    raw_bytes = sum(len(sources[n].encode()) for n in names)
    parts = [(n, len(sources[n].encode()), minify(_without_help(sources[n]) if n == ENTRY else sources[n], n))
             for n in names]
    if config_json is not None:
        config_json = json.dumps(config_delta(config_json), separators=(",", ":"), sort_keys=True)
    packages = sorted(n for n in names if any(m.startswith(n + ".") for m in sources))
    values = {"K": repr(packages), "C": repr(config_json), "W": repr(raw_bytes)}
    boot = re.sub(r"@([KCW])@", lambda m: values[m.group(1)], _BOOTSTRAP)
    # The modules follow the bootstrap as they are, each "\0NAME\1SOURCE": no source holds a NUL or a raw
    # \x01, and raw text compresses ~650 bytes smaller than the same sources as repr() literals.
    payload = boot + "".join(f"\0{name}\1{mini}" for name, _, mini in parts)
    return parts, payload, raw_bytes


def build_payload(config_json: str | None = None) -> tuple[str, int]:
    """(the decompressed text: bootstrap source, then the minified modules; raw code bytes before minifying)."""
    _, payload, raw_bytes = _payload_parts(config_json)
    return payload, raw_bytes


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
    # `t` is the decompressed text; the bootstrap is its part before the first NUL and reads the modules from it.
    return (f"{_COOKIE}{_SHIM_IMPORT[codec]};d={to_text_literal(blob)}.encode(\"l1\");"
            f"t=B.decompress({text_literal_decoder('d', len(blob))}).decode();exec(t[:t.find(chr(0))])\n")


@functools.lru_cache(maxsize=8)
def _wrap(payload: bytes) -> str:
    """The shortest shim around `payload` (latin-1 text: its length is the file's size in bytes)."""
    return min((_shim(codec, _compress(payload, codec)) for codec in _SHIM_IMPORT), key=len)


def build_train_gpt(config_json: str | None = None) -> str:
    """The single-file submission's text (write it with `file_bytes`): the bundled package behind an exec shim.

    `config_json` (a run's config.json) becomes what the file trains with when run with no arguments.
    """
    payload, _ = build_payload(config_json)
    # A broken bundle must fail here, not in the record folder.
    for i, source in enumerate(payload.split("\0")):
        compile(source.split("\1", 1)[-1], RECORD_CODE_NAME if i == 0 else source.split("\1", 1)[0], "exec")
    return _wrap(payload.encode())


# --------------------------------------------------------------------------- where the bytes go
def packed_size_rows(config_json: str | None = None) -> list[tuple[str, int, int, int]]:
    """(part, raw bytes, minified bytes, counted bytes) per bundled module, in bundle order; rows sum to the file.

    A module's counted bytes are what it adds to the compressed stream after the modules before it (the stream
    is compressed as one, so a module's cost depends on what precedes it); the codec is the one the file uses.
    """
    parts, payload, _ = _payload_parts(config_json)
    code = build_train_gpt(config_json)
    codec = next(c for c, line in _SHIM_IMPORT.items() if code.startswith(_COOKIE + line + ";"))
    total = len(file_bytes(code))
    full = len(_compress(payload.encode(), codec))

    def packed_prefix(n_chars: int) -> int:
        return len(_compress(payload[:n_chars].encode(), codec))

    pos = payload.index("\0")
    rows = [("bootstrap and config", 0, pos, packed_prefix(pos))]
    done = rows[0][3]
    for name, raw, mini in parts:
        entry = f"\0{name}\1{mini}"
        assert payload.startswith(entry, pos), f"{name}: bundle layout changed"
        pos += len(entry)
        now = packed_prefix(pos)
        rows.append((name, raw, len(mini), now - done))
        done = now
    assert pos == len(payload) and done == full
    rows.append((f"{codec} stream as latin-1 text + shim", 0, 0, total - full))
    assert sum(r[3] for r in rows) == total
    return rows


def packed_size_table(config_json: str | None = None, rows: list | None = None) -> str:
    """`packed_size_rows` (or the `rows` given) as a table, biggest modules first, then the total and the left-out."""
    rows = rows or packed_size_rows(config_json)
    body = [rows[0]] + sorted(rows[1:-1], key=lambda r: -r[3]) + rows[-1:]
    total = ("total (train_gpt.py)", sum(r[1] for r in rows), sum(r[2] for r in rows), sum(r[3] for r in rows))
    width = max(len(r[0]) for r in body + [total])
    head = f"{'part':<{width}}  {'raw':>9}  {'minified':>9}  {'counted':>9}"
    lines = [head, "-" * len(head)]
    lines += [f"{n:<{width}}  {raw:>9,d}  {mini:>9,d}  {packed:>9,d}" for n, raw, mini, packed in body + [total]]
    modules = package_sources()
    out = sorted(set(modules) - set(bundled_modules(modules, config_json)))
    lines.append("left out: " + ", ".join(f"{n} ({len(modules[n].encode()):,})" for n in out))
    return "\n".join(lines)
