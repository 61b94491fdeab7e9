"""Byte coders for the artifact: brotli, lzma, zstd, lrzip, and a byte-shuffle transform.

Every coder is a pair of pure functions bytes -> bytes that roundtrips bit-exactly
(empty input included). A *coder spec* names a chain applied left to right when
compressing: `"brotli"`, or `"shuffle2+brotli"` (byte-shuffle with stride 2, then
brotli). The artifact header stores the spec of each stream, so decompression
never guesses.

Settings are the record's strongest ones: brotli quality 11 / lgwin 24, lzma
preset 9 | EXTREME, zstd level 22, and `lrzip -z -L 9` (ZPAQ), which is an
optional system binary run in a subprocess. When lrzip is missing the caller
asks `lrzip_fallback_note()` for the line to log and uses the other coders.

Why shuffle: fp16/fp32 arrays interleave a noisy low byte with a smooth high
byte; grouping byte k of every element together gives the entropy coder long
runs of similar bytes (R29 used stride 2 before brotli).
"""

from __future__ import annotations

import lzma
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable

import brotli
import numpy as np
import zstandard

from pgolf.errors import ArtifactError

CODECS = ("brotli", "lzma", "zstd", "lrzip")
"""Every codec this module knows; `available_codecs()` says which can run here."""

BROTLI_QUALITY = 11
BROTLI_LGWIN = 24
LZMA_PRESET = 9 | lzma.PRESET_EXTREME
ZSTD_LEVEL = 22
LRZIP_LEVEL = 9


def lrzip_available() -> bool:
    return shutil.which("lrzip") is not None


def available_codecs() -> list[str]:
    """Codecs usable on this machine, in `CODECS` order (lrzip only with the binary on PATH)."""
    return [c for c in CODECS if c != "lrzip" or lrzip_available()]


def fallback_codec() -> str:
    """The coder named where lrzip would be when nothing was measured: brotli (R29's choice).

    The per-group writer does better than a fixed choice: it tries every available
    coder on each group and names the one that won most groups (`lrzip_fallback_note`).
    """
    return "brotli"


def lrzip_fallback_note(chosen: str | None = None) -> str | None:
    """The line to log when lrzip is missing (None when it is installed)."""
    if lrzip_available():
        return None
    return f"lrzip not found, using {chosen or fallback_codec()}"


# --------------------------------------------------------------------------- lrzip
def _lrzip(args: list[str], data: bytes, in_name: str, out_name: str) -> bytes:
    """Run lrzip on a temporary file pair; lrzip has no stdin mode that round-trips reliably."""
    exe = shutil.which("lrzip")
    if exe is None:
        raise ArtifactError(f"lrzip not found on PATH; install it (apt-get install lrzip) or use {fallback_codec()}")
    with tempfile.TemporaryDirectory(prefix="pgolf-lrzip-") as tmp:
        src, dst = os.path.join(tmp, in_name), os.path.join(tmp, out_name)
        with open(src, "wb") as f:
            f.write(data)
        proc = subprocess.run([exe, *args, "-o", dst, src], capture_output=True)
        if proc.returncode != 0:
            msg = proc.stderr.decode(errors="replace").strip().splitlines()
            raise ArtifactError(f"lrzip {' '.join(args)} failed: {msg[-1] if msg else 'exit ' + str(proc.returncode)}")
        with open(dst, "rb") as f:
            return f.read()


def _lrzip_compress(data: bytes) -> bytes:
    # lrzip refuses empty files, and an empty stream needs no bytes anyway.
    if not data:
        return b""
    return _lrzip(["-q", "-f", "-z", "-L", str(LRZIP_LEVEL)], data, "blob.bin", "blob.bin.lrz")


def _lrzip_decompress(data: bytes) -> bytes:
    if not data:
        return b""
    return _lrzip(["-q", "-f", "-d"], data, "blob.bin.lrz", "blob.bin")


# --------------------------------------------------------------------------- single codecs
def compress(data: bytes, codec: str) -> bytes:
    """Compress with one codec (or a spec chain such as "shuffle2+lzma")."""
    if "+" in codec or codec.startswith("shuffle"):
        return compress_spec(data, codec)
    data = bytes(data)
    if codec == "brotli":
        return brotli.compress(data, quality=BROTLI_QUALITY, lgwin=BROTLI_LGWIN)
    if codec == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_XZ, preset=LZMA_PRESET)
    if codec == "zstd":
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)
    if codec == "lrzip":
        return _lrzip_compress(data)
    if codec == "raw":
        return data
    raise ArtifactError(f"unknown codec {codec!r}; known: {', '.join(CODECS)}")


def decompress(data: bytes, codec: str) -> bytes:
    """Inverse of `compress` for the same codec or spec."""
    if "+" in codec or codec.startswith("shuffle"):
        return decompress_spec(data, codec)
    data = bytes(data)
    try:
        if codec == "brotli":
            return brotli.decompress(data)
        if codec == "lzma":
            return lzma.decompress(data, format=lzma.FORMAT_XZ)
        if codec == "zstd":
            # The frame records its content size, so no max_output_size guess is needed.
            return zstandard.ZstdDecompressor().decompress(data)
    except (brotli.error, lzma.LZMAError, zstandard.ZstdError) as e:
        raise ArtifactError(f"{codec} stream is corrupt: {e}") from None
    if codec == "lrzip":
        return _lrzip_decompress(data)
    if codec == "raw":
        return data
    raise ArtifactError(f"unknown codec {codec!r}; known: {', '.join(CODECS)}")


# --------------------------------------------------------------------------- byte shuffle
def byte_shuffle(data: bytes, stride: int = 2) -> bytes:
    """Byte k of every `stride`-byte element first, then byte k+1, ...; a tail shorter than
    one element is kept as is at the end, so any length works."""
    assert stride >= 1
    n_full = len(data) // stride * stride
    if stride == 1 or n_full == 0:
        return bytes(data)
    body = np.frombuffer(data, dtype=np.uint8, count=n_full).reshape(-1, stride)
    return body.T.tobytes() + bytes(data[n_full:])


def byte_unshuffle(data: bytes, stride: int = 2) -> bytes:
    """Inverse of `byte_shuffle` with the same stride."""
    assert stride >= 1
    n_full = len(data) // stride * stride
    if stride == 1 or n_full == 0:
        return bytes(data)
    body = np.frombuffer(data, dtype=np.uint8, count=n_full).reshape(stride, -1)
    return body.T.tobytes() + bytes(data[n_full:])


# --------------------------------------------------------------------------- specs
def _parse_spec(spec: str) -> list[tuple[str, int]]:
    """"shuffle2+lzma" -> [("shuffle", 2), ("lzma", 0)]."""
    steps = []
    for part in spec.split("+"):
        if part.startswith("shuffle"):
            digits = part[len("shuffle"):] or "2"
            if not digits.isdigit() or int(digits) < 1:
                raise ArtifactError(f"coder spec {spec!r}: bad shuffle stride in {part!r}")
            steps.append(("shuffle", int(digits)))
        elif part in CODECS or part == "raw":
            steps.append((part, 0))
        else:
            raise ArtifactError(f"coder spec {spec!r}: unknown step {part!r}; known: shuffleN, {', '.join(CODECS)}")
    return steps


def compress_spec(data: bytes, spec: str) -> bytes:
    for name, stride in _parse_spec(spec):
        data = byte_shuffle(data, stride) if name == "shuffle" else compress(data, name)
    return data


def decompress_spec(data: bytes, spec: str) -> bytes:
    for name, stride in reversed(_parse_spec(spec)):
        data = byte_unshuffle(data, stride) if name == "shuffle" else decompress(data, name)
    return data


def compress_best(data: bytes, specs: Iterable[str]) -> tuple[str, bytes]:
    """Try each spec and keep the smallest output (ties go to the earlier spec)."""
    best: tuple[str, bytes] | None = None
    for spec in specs:
        blob = compress_spec(data, spec)
        if best is None or len(blob) < len(best[1]):
            best = (spec, blob)
    assert best is not None, "compress_best needs at least one spec"
    return best


def entropy_coder_specs() -> list[str]:
    """Candidates for int8 tensor streams: lrzip when installed, then lzma, brotli and zstd."""
    return [c for c in ("lrzip", "lzma", "brotli", "zstd") if c in available_codecs()]


def order0_entropy_bits(symbols: np.ndarray) -> float:
    """Shannon entropy of the symbol histogram, in bits per symbol (the order-0 floor)."""
    flat = np.asarray(symbols).reshape(-1)
    if flat.size == 0:
        return 0.0
    _, counts = np.unique(flat, return_counts=True)
    p = counts / flat.size
    return float(-(p * np.log2(p)).sum())
