"""The compressed model artifact (`final_model.int6.ptz`): a versioned, checksummed container.

Layout (all integers little-endian):

    b"PGOLFART"                       8-byte magic
    u8 n, tag[n]                      format tag, "pgolf-artifact-v1"
    u32 h, header[h]                  brotli-compressed JSON header
    stream 0, stream 1, ...           compressed streams, lengths in the header
    sha256[32]                        of every byte before it

The header holds the quantization settings, the compressor, the QState `meta`,
the coder spec, raw and compressed length of every stream, and a manifest of
every tensor (name, dtype, shape, stream, offset). Tensors are stored as raw
little-endian bytes that the manifest describes, so reading an artifact never
unpickles anything: a corrupt or hostile file can at worst raise ArtifactError.

Compressors (`QuantConfig.compressor`): `pergroup` (the record's role groups,
see pergroup.py, plus a permutation stream and a remainder stream), or one
stream of every tensor coded with `brotli`, `lzma` or `zstd`.

The header is brotli-compressed because it is counted in the 16 MB: a
manifest of ~100 tensors is several KB as plain JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import brotli
import torch

from pgolf.errors import ArtifactError
from pgolf.quant import codecs, pergroup

MAGIC = b"PGOLFART"
FORMAT_TAG = "pgolf-artifact-v1"
CHECKSUM_BYTES = 32

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
    "int8": torch.int8, "uint8": torch.uint8, "int16": torch.int16, "int32": torch.int32, "int64": torch.int64,
    "bool": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}

# Remainder candidates: fp16 scales and factors often shrink further after a byte shuffle.
_REST_SPECS = ("brotli", "lzma", "zstd", "shuffle2+brotli", "shuffle2+lzma")

QState = dict[str, Any]


@dataclass
class ArtifactInfo:
    """What `write_artifact` produced; `model_bytes` is the file size on disk."""

    model_bytes: int
    streams: dict[str, int]
    """stream name -> compressed bytes."""
    coders: dict[str, str] = field(default_factory=dict)
    raw_streams: dict[str, int] = field(default_factory=dict)
    overhead_bytes: int = 0
    """Magic, tag, header and checksum."""
    compress_s: float = 0.0
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- tensors <-> bytes
def tensors_to_bytes(tensors: dict[str, torch.Tensor]) -> tuple[list[dict], bytes]:
    """Concatenate raw little-endian tensor bytes; the manifest says where each one is."""
    manifest: list[dict] = []
    parts: list[bytes] = []
    offset = 0
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise ArtifactError(f"qstate tensor {name!r}: expected a Tensor, got {type(t).__name__}")
        if t.dtype not in _DTYPE_NAMES:
            raise ArtifactError(f"qstate tensor {name!r}: dtype {t.dtype} cannot be stored")
        flat = t.detach().cpu().contiguous().reshape(-1)
        raw = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
        manifest.append({"name": name, "dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape), "offset": offset})
        parts.append(raw)
        offset += len(raw)
    return manifest, b"".join(parts)


def tensors_from_bytes(manifest: list[dict], payload: bytes, where: str) -> dict[str, torch.Tensor]:
    """Inverse of `tensors_to_bytes`; `where` names the stream in error messages."""
    out: dict[str, torch.Tensor] = {}
    for entry in manifest:
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is None:
            raise ArtifactError(f"{where}: tensor {entry['name']!r} has unknown dtype {entry['dtype']!r}")
        shape = [int(s) for s in entry["shape"]]
        numel = 1
        for s in shape:
            numel *= s
        n_bytes = numel * torch.empty(0, dtype=dtype).element_size()
        start = int(entry["offset"])
        if start + n_bytes > len(payload):
            raise ArtifactError(f"{where}: truncated at tensor {entry['name']!r} "
                                f"(needs bytes {start}..{start + n_bytes}, stream has {len(payload)})")
        if numel == 0:
            out[entry["name"]] = torch.empty(shape, dtype=dtype)
            continue
        buf = bytearray(payload[start:start + n_bytes])  # a private, writable copy
        out[entry["name"]] = torch.frombuffer(buf, dtype=torch.uint8).view(dtype).reshape(shape)
    return out


# --------------------------------------------------------------------------- write
def _qcfg_dict(qcfg) -> dict:
    return dataclasses.asdict(qcfg) if dataclasses.is_dataclass(qcfg) else dict(qcfg)


def _pergroup_split(tensors: dict) -> tuple[pergroup.PerGroupSplit, dict[str, tuple[str, bytes]]]:
    """Split and code the groups; a sortable group keeps its L1 order only where that is smaller
    counting the bytes of its stored permutation."""
    sorted_split = pergroup.split_groups(tensors, simsort=True)
    plain_split = pergroup.split_groups(tensors, simsort=False)
    perms = pergroup.group_perm_bytes(sorted_split)
    sortable = [k for k, p in perms.items() if p]
    both = pergroup.compress_groups({**sorted_split.groups,
                                     **{f"{k}\0plain": plain_split.groups[k] for k in sortable}})
    keep_sorted = set()
    for k in sortable:
        perm_cost = len(codecs.compress(perms[k], "brotli"))
        if len(both[k][1]) + perm_cost < len(both[f"{k}\0plain"][1]):
            keep_sorted.add(k)
    split = pergroup.select_sorting(sorted_split, plain_split, keep_sorted)
    coded = {k: both[k] if k in keep_sorted or k not in sortable else both[f"{k}\0plain"] for k in split.groups}
    return split, coded


def encode_streams(qstate: QState, compressor: str) -> tuple[dict, list[tuple[str, str, bytes, int]], list[str]]:
    """QState -> (header fields, [(stream name, coder spec, compressed bytes, raw length)], notes)."""
    tensors = qstate["tensors"]
    notes: list[str] = []
    streams: list[tuple[str, str, bytes, int]] = []
    header: dict[str, Any] = {"order": list(tensors)}
    if compressor == "pergroup":
        split, coded = _pergroup_split(tensors)
        for key, (spec, blob) in coded.items():
            streams.append((f"group:{key}", spec, blob, len(split.groups[key])))
        wins = Counter(spec for spec, _ in coded.values())
        if wins:
            best, n_won = wins.most_common(1)[0]
            note = codecs.lrzip_fallback_note(f"{best} (smallest on {n_won} of {len(coded)} groups)")
            if note:
                notes.append(note)
        spec, blob = codecs.compress_best(split.perms, ("brotli", "lzma"))
        streams.append(("perms", spec, blob, len(split.perms)))
        manifest, raw = tensors_to_bytes(split.rest)
        spec, blob = codecs.compress_best(raw, _REST_SPECS)
        streams.append(("rest", spec, blob, len(raw)))
        header.update(layout=split.layout, perm_dtype=split.perm_dtype, manifest=manifest)
    elif compressor in ("brotli", "lzma", "zstd"):
        manifest, raw = tensors_to_bytes(tensors)
        streams.append(("tensors", compressor, codecs.compress(raw, compressor), len(raw)))
        header.update(manifest=manifest)
    else:
        raise ArtifactError(f"quant.compressor: unknown compressor {compressor!r} (pergroup|brotli|lzma|zstd)")
    return header, streams, notes


def write_artifact(path: str | Path, qstate: QState, qcfg) -> ArtifactInfo:
    """Write QState as a checksummed artifact (atomic rename) and report its sizes."""
    assert sys.byteorder == "little", "the artifact stores little-endian tensors"
    t0 = time.perf_counter()
    q = _qcfg_dict(qcfg)
    compressor = q.get("compressor", "pergroup")
    fields, streams, notes = encode_streams(qstate, compressor)
    header = {
        "format": FORMAT_TAG,
        "quant": q,
        "compressor": compressor,
        "meta": qstate.get("meta", {}),
        "streams": [{"name": n, "coder": s, "bytes": len(b), "raw_bytes": r} for n, s, b, r in streams],
        **fields,
    }
    try:
        header_json = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    except TypeError as e:
        raise ArtifactError(f"qstate meta is not JSON-serializable: {e}") from None
    header_blob = brotli.compress(header_json, quality=11)
    tag = FORMAT_TAG.encode()
    head = MAGIC + struct.pack("<B", len(tag)) + tag + struct.pack("<I", len(header_blob)) + header_blob
    h = hashlib.sha256(head)
    for _, _, blob, _ in streams:
        h.update(blob)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(head)
        for _, _, blob, _ in streams:
            f.write(blob)
        f.write(h.digest())
    os.replace(tmp, path)
    model_bytes = os.path.getsize(path)
    stream_bytes = {n: len(b) for n, _, b, _ in streams}
    info = ArtifactInfo(
        model_bytes=model_bytes,
        streams=stream_bytes,
        coders={n: s for n, s, _, _ in streams},
        raw_streams={n: r for n, _, _, r in streams},
        overhead_bytes=model_bytes - sum(stream_bytes.values()),
        compress_s=time.perf_counter() - t0,
        notes=notes,
    )
    return info


# --------------------------------------------------------------------------- read
def _parse(data: bytes, where: str) -> tuple[dict, int]:
    """Validate magic, tag and header; return (header, offset of the first stream)."""
    if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
        raise ArtifactError(f"{where}: not a pgolf artifact (bad magic {data[:len(MAGIC)]!r})")
    pos = len(MAGIC)
    if len(data) < pos + 1:
        raise ArtifactError(f"{where}: truncated in the format tag")
    n_tag = data[pos]
    tag = data[pos + 1:pos + 1 + n_tag].decode(errors="replace")
    pos += 1 + n_tag
    if tag != FORMAT_TAG:
        raise ArtifactError(f"{where}: format tag {tag!r}, this pgolf reads {FORMAT_TAG!r}")
    if len(data) < pos + 4:
        raise ArtifactError(f"{where}: truncated in the header length")
    (n_header,) = struct.unpack_from("<I", data, pos)
    pos += 4
    if len(data) < pos + n_header:
        raise ArtifactError(f"{where}: truncated in the header ({len(data) - pos} of {n_header} bytes)")
    try:
        header = json.loads(brotli.decompress(data[pos:pos + n_header]))
    except (brotli.error, ValueError) as e:
        raise ArtifactError(f"{where}: header is corrupt ({e})") from None
    pos += n_header
    try:
        if not isinstance(header, dict) or header.get("format") != FORMAT_TAG:
            raise TypeError("not a header")
        expected = pos + sum(int(s["bytes"]) for s in header["streams"]) + CHECKSUM_BYTES
    except (KeyError, TypeError, ValueError):
        raise ArtifactError(f"{where}: header is malformed (no {FORMAT_TAG} stream table)") from None
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise ArtifactError(f"{where}: {what}: {len(data)} bytes on disk, the header describes {expected}")
    digest = hashlib.sha256(memoryview(data)[:-CHECKSUM_BYTES]).digest()
    if digest != data[-CHECKSUM_BYTES:]:
        raise ArtifactError(f"{where}: checksum mismatch (sha256 {digest.hex()[:16]}..., "
                            f"stored {data[-CHECKSUM_BYTES:].hex()[:16]}...); the file is corrupt")
    return header, pos


def read_header(path: str | Path) -> dict:
    """The validated header of an artifact (streams, settings, manifest) without decompressing."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: artifact not found")
    header, _ = _parse(path.read_bytes(), str(path))
    return header


def read_artifact(path: str | Path) -> QState:
    """Load an artifact written by `write_artifact`: tensors exactly as written, and meta."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: artifact not found")
    data = path.read_bytes()
    header, pos = _parse(data, str(path))
    raw: dict[str, bytes] = {}
    for s in header["streams"]:
        blob = data[pos:pos + int(s["bytes"])]
        pos += int(s["bytes"])
        raw[s["name"]] = codecs.decompress_spec(blob, s["coder"])
        if len(raw[s["name"]]) != int(s["raw_bytes"]):
            raise ArtifactError(f"{path}: stream {s['name']!r} decoded to {len(raw[s['name']])} bytes, "
                                f"expected {s['raw_bytes']}")
    required = {"rest", "perms"} if header["compressor"] == "pergroup" else {"tensors"}
    if not required <= set(raw):
        raise ArtifactError(f"{path}: {header['compressor']} artifact lacks streams {sorted(required - set(raw))}")
    if header["compressor"] == "pergroup":
        rest = tensors_from_bytes(header["manifest"], raw["rest"], f"{path}: stream 'rest'")
        split = pergroup.PerGroupSplit(
            groups={k[len("group:"):]: v for k, v in raw.items() if k.startswith("group:")},
            layout=header["layout"], perms=raw["perms"], perm_dtype=header["perm_dtype"], rest=rest)
        tensors = pergroup.merge_groups(split)
    else:
        tensors = tensors_from_bytes(header["manifest"], raw["tensors"], f"{path}: stream 'tensors'")
    missing = [n for n in header["order"] if n not in tensors]
    if missing or len(tensors) != len(header["order"]):
        raise ArtifactError(f"{path}: manifest and streams disagree (missing {missing[:3]})")
    return {"tensors": {n: tensors[n] for n in header["order"]}, "meta": header["meta"]}
