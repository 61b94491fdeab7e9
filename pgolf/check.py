"""`pgolf data check DIR`: verify a data directory before any number is computed on it.

Each check is one row (PASS / FAIL / SKIP + detail). The ones that matter most
guard the bugs that sank real submissions: byte sidecars that do not line up
with the val tokens or do not add up to the original text (PR #2138's inflated
denominator), and validation documents that also appear in the training
shards (issue #2127, where 80% of the scored docs were trained on). The
overlap check hashes every document's token sequence, so it needs no text
and works on downloaded directories too.

Works on pgolf-prepared and challenge-downloaded directories; checks that need
what a directory does not have (per-document byte totals, a manifest) are
SKIP, not FAIL. Any FAIL makes `pgolf data check` exit non-zero.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pgolf.data import MANIFEST_NAME, load_manifest, tokenizer_path
from pgolf.errors import DataError
from pgolf.shards import read_header, read_shard, shard_paths
from pgolf.tokenizer import BOS_ID, file_sha256

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str
    detail: str

    @property
    def ok(self) -> bool:
        return self.status != FAIL


def _headers(data_dir: Path) -> tuple[CheckResult, dict[str, list[Path]]]:
    """Validate every shard's header and size; returns the readable shards per kind."""
    kinds = {k: shard_paths(data_dir, k) for k in ("train", "val", "val_bytes")}
    bad, good = [], {}
    for kind, paths in kinds.items():
        good[kind] = []
        for p in paths:
            try:
                read_header(p)
                good[kind].append(p)
            except DataError as e:
                bad.append(str(e))
    num = sum(len(v) for v in kinds.values())
    if bad:
        more = f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""
        return CheckResult("shard headers", FAIL, bad[0] + more), good
    if not kinds["val"] or not kinds["train"]:
        missing = "fineweb_val_*.bin" if not kinds["val"] else "fineweb_train_*.bin"
        return CheckResult("shard headers", FAIL, f"{data_dir}: no {missing} shards"), good
    return CheckResult("shard headers", PASS, f"{num} shards: magic, version and size = 1024 + 2n"), good


def _manifest_hashes(data_dir: Path, manifest: dict | None) -> CheckResult:
    if manifest is None:
        return CheckResult("manifest hashes", SKIP, f"no {MANIFEST_NAME}")
    files = manifest.get("files", {})
    bad = []
    for name, info in sorted(files.items()):
        p = data_dir / name
        if not p.exists():
            bad.append(f"{p}: listed in the manifest but missing")
        elif file_sha256(p) != info.get("sha256"):
            bad.append(f"{p}: sha256 differs from the manifest")
    on_disk = {p.name for p in data_dir.glob("fineweb_*.bin")}
    bad += [f"{data_dir / n}: shard not listed in the manifest" for n in sorted(on_disk - set(files))]
    tok = tokenizer_path(data_dir, manifest)
    if manifest.get("tokenizer_sha256") and tok.exists() and file_sha256(tok) != manifest["tokenizer_sha256"]:
        bad.append(f"{tok}: sha256 differs from the manifest's tokenizer_sha256")
    if bad:
        return CheckResult("manifest hashes", FAIL, bad[0] + (f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""))
    return CheckResult("manifest hashes", PASS, f"{len(files)} files match their sha256")


def _vocab_size(data_dir: Path, manifest: dict | None, tokenizer: str | None) -> tuple[int | None, str]:
    path = Path(tokenizer) if tokenizer else tokenizer_path(data_dir, manifest)
    if path.exists():
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(path.read_bytes())
            return int(sp.vocab_size()), f"{path.name}"
        except RuntimeError:
            pass
    if manifest and manifest.get("vocab_size"):
        return int(manifest["vocab_size"]), MANIFEST_NAME
    return None, ""


def _token_ids(paths: list[Path], vocab_size: int | None, source: str) -> CheckResult:
    if vocab_size is None:
        return CheckResult("token ids < vocab", SKIP, "no tokenizer or manifest vocab_size")
    for p in paths:
        toks = read_shard(p)
        if toks.size and int(toks.max()) >= vocab_size:
            pos = int(np.argmax(toks >= vocab_size))
            return CheckResult("token ids < vocab", FAIL, f"{p}: token id {int(toks[pos])} at position {pos} "
                               f">= vocab size {vocab_size} ({source})")
    return CheckResult("token ids < vocab", PASS, f"all ids < {vocab_size} ({source})")


def _bos_starts(good: dict[str, list[Path]], manifest: dict | None) -> tuple[CheckResult, int]:
    counts = {}
    for kind in ("val", "train"):
        paths = good[kind]
        if paths and (read_shard(paths[0]).size == 0 or int(read_shard(paths[0])[0]) != BOS_ID):
            return CheckResult("BOS at doc starts", FAIL, f"{paths[0]}: the {kind} stream does not start with BOS "
                               f"(id {BOS_ID})"), 0
        counts[kind] = sum(int(np.count_nonzero(read_shard(p) == BOS_ID)) for p in paths)
    for kind in ("val", "train"):
        want = (manifest or {}).get(f"num_{kind}_docs")
        if want is not None and counts[kind] != want:
            return CheckResult("BOS at doc starts", FAIL, f"{kind} shards hold {counts[kind]} BOS tokens but the "
                               f"manifest says {want} documents"), counts["val"]
    return CheckResult("BOS at doc starts", PASS, f"streams start with BOS; {counts['val']:,} val docs, "
                       f"{counts['train']:,} train docs"), counts["val"]


def _sidecar(data_dir: Path, good: dict[str, list[Path]], manifest: dict | None) -> list[CheckResult]:
    vals, sides = good["val"], good["val_bytes"]
    caseops = bool((manifest or {}).get("caseops"))
    if not sides and not shard_paths(data_dir, "val_bytes"):
        if caseops:
            return [CheckResult("sidecar length", FAIL, f"{data_dir}: CaseOps data without fineweb_val_bytes_*.bin")]
        return [CheckResult("sidecar length", SKIP, "plain SentencePiece: bytes come from the LUT")]
    if len(sides) != len(vals):
        return [CheckResult("sidecar length", FAIL, f"{data_dir}: {len(sides)} readable byte sidecars for "
                            f"{len(vals)} val shards")]
    for v, s in zip(vals, sides):
        nv, ns = read_header(v), read_header(s)
        if nv != ns:
            what = "shorter" if ns < nv else "longer"
            return [CheckResult("sidecar length", FAIL, f"{s}: sidecar {what} than its token shard "
                                f"({ns} counts vs {nv} tokens in {v.name})")]
    tokens = np.concatenate([np.asarray(read_shard(p)) for p in vals])
    counts = np.concatenate([np.asarray(read_shard(p)) for p in sides]).astype(np.int64)
    out = [CheckResult("sidecar length", PASS, f"{counts.size:,} counts aligned 1:1 with the val tokens")]
    bos = np.flatnonzero(tokens == BOS_ID)
    if counts[bos].any():
        out.append(CheckResult("sidecar total == UTF-8 bytes", FAIL, f"{sides[0].parent}: BOS positions carry "
                               "non-zero byte counts"))
        return out
    want = (manifest or {}).get("val_doc_bytes")
    if want is None:
        out.append(CheckResult("sidecar total == UTF-8 bytes", SKIP, f"{int(counts.sum()):,} bytes; no per-document "
                               "byte totals in the manifest to compare with"))
        return out
    per_doc = np.add.reduceat(counts, bos).tolist() if bos.size else []
    if len(per_doc) != len(want):
        out.append(CheckResult("sidecar total == UTF-8 bytes", FAIL, f"{len(per_doc)} val docs in the shards, "
                               f"{len(want)} byte totals in the manifest"))
    elif per_doc != want:
        i = next(i for i, (a, b) in enumerate(zip(per_doc, want)) if a != b)
        out.append(CheckResult("sidecar total == UTF-8 bytes", FAIL, f"{sides[0]}: val doc {i} sums to {per_doc[i]} "
                               f"bytes, its text has {want[i]}"))
    else:
        out.append(CheckResult("sidecar total == UTF-8 bytes", PASS, f"{sum(want):,} bytes over {len(want):,} docs, "
                               "equal per document"))
    return out


def _doc_hashes(paths: list[Path], progress: bool, desc: str):
    """Yield a 16-byte digest per document (BOS through the token before the next BOS), across shard boundaries."""
    carry = np.zeros(0, dtype=np.uint16)
    for p in tqdm(paths, desc=desc, unit="shard", disable=None if progress else True):
        toks = np.concatenate([carry, np.asarray(read_shard(p))])
        bos = np.flatnonzero(toks == BOS_ID)
        if bos.size == 0:
            carry = toks
            continue
        for s, e in zip(bos[:-1], bos[1:]):
            yield hashlib.blake2b(toks[s:e].tobytes(), digest_size=16).digest()
        carry = toks[bos[-1]:]
    if carry.size:
        yield hashlib.blake2b(carry.tobytes(), digest_size=16).digest()


def _overlap(good: dict[str, list[Path]], progress: bool) -> CheckResult:
    val_hashes = set(_doc_hashes(good["val"], progress, "hash val"))
    num_train = num_shared = 0
    for h in _doc_hashes(good["train"], progress, "hash train"):
        num_train += 1
        num_shared += h in val_hashes
    if num_shared:
        first = good["train"][0].parent
        return CheckResult("val/train overlap", FAIL, f"{first}: {num_shared:,} of {num_train:,} training documents are "
                           f"identical to a validation document (issue #2127)")
    return CheckResult("val/train overlap", PASS, f"none of {num_train:,} train docs equals one of "
                       f"{len(val_hashes):,} val docs")


def require_shards(data_dir: str | Path) -> None:
    """Refuse, before a run writes anything, a directory that cannot be trained and scored on: not a
    directory, or without train or validation shards (the cheap part of `check_data`)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: not a directory")
    missing = [f"fineweb_{split}_*.bin" for split in ("train", "val") if not shard_paths(data_dir, split)]
    if missing:
        raise DataError(f"{data_dir}: no {' and no '.join(missing)} shards; prepare it with `pgolf data prepare` "
                        f"or download it with `pgolf data download`")


def check_data(data_dir: str | Path, tokenizer: str | Path | None = None, progress: bool = False
               ) -> list[CheckResult]:
    """Run every check on DIR and return one result per row (see the module docstring)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: not a directory")
    results = []
    manifest = None
    if (data_dir / MANIFEST_NAME).exists():
        try:
            manifest = load_manifest(data_dir)
            results.append(CheckResult("manifest", PASS, f"{MANIFEST_NAME}: {manifest.get('format', 'unknown format')}"))
        except DataError as e:
            results.append(CheckResult("manifest", FAIL, str(e)))
    else:
        results.append(CheckResult("manifest", SKIP, f"no {MANIFEST_NAME} (counts and hashes not checked)"))
    header_result, good = _headers(data_dir)
    results.append(header_result)
    results.append(_manifest_hashes(data_dir, manifest))
    vocab_size, vocab_source = _vocab_size(data_dir, manifest, tokenizer)
    results.append(_token_ids(good["train"] + good["val"], vocab_size, vocab_source))
    bos_result, _ = _bos_starts(good, manifest)
    results.append(bos_result)
    results.extend(_sidecar(data_dir, good, manifest))
    results.append(_overlap(good, progress))
    return results


def format_table(results: list[CheckResult]) -> str:
    width = max(len(r.name) for r in results)
    lines = [f"{'check':<{width}}  status  detail", f"{'-' * width}  ------  {'-' * 40}"]
    lines += [f"{r.name:<{width}}  {r.status:<6}  {r.detail}" for r in results]
    return "\n".join(lines)
