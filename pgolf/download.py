"""`pgolf data download`: the challenge's published shards, through huggingface_hub.

The published datasets share one layout on the Hugging Face hub (dataset repos):

    datasets/manifest.json                                 lists datasets and tokenizers
    datasets/datasets/fineweb10B_<name>/fineweb_val_000000.bin ...
    datasets/datasets/fineweb10B_<name>/fineweb_train_000000.bin ...
    datasets/datasets/fineweb10B_<name>/fineweb_val_bytes_000000.bin ...   (CaseOps only)
    datasets/tokenizers/<model file>

We read the hub manifest for the shard counts and the tokenizer file, fetch
the validation shards (plus byte sidecars), the first `train_shards` training
shards and the tokenizer into one flat directory, and write a pgolf
`manifest.json` so `load_val`, `pgolf data check` and training read it exactly
like a prepared directory. Re-running resumes: files already present and
intact are kept, huggingface_hub resumes partial blobs in its cache, and each
file lands under its final name only once complete.

Variants (repository and dataset name as the challenge's records publish them):

    sp1024          willdepueoai/parameter-golf         fineweb10B_sp1024
    sp8192          kevclark/parameter-golf             fineweb10B_sp8192
    sp8192-caseops  romeerp/parameter-golf-caseops-v1   fineweb10B_sp8192_lossless_caps_caseops_v1_reserved

Real command: `pgolf data download --variant sp8192-caseops --out data/sp8192-caseops --train-shards 80`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

import pgolf
from pgolf.data import MANIFEST_NAME
from pgolf.encoding import DocumentEncoder
from pgolf.errors import DataError
from pgolf.shards import read_header, read_shard, shard_name
from pgolf.tokenizer import BOS_ID, file_sha256

REMOTE_ROOT = "datasets"


@dataclass(frozen=True)
class Variant:
    repo_id: str
    name: str      # the hub's variant name; the dataset folder is fineweb10B_<name>
    caseops: bool
    train_shards: int  # what the records on this data trained with: a different count changes results


VARIANTS = {
    "sp1024": Variant("willdepueoai/parameter-golf", "sp1024", caseops=False, train_shards=80),
    "sp4096": Variant("kevclark/parameter-golf", "sp4096", caseops=False, train_shards=128),
    "sp8192": Variant("kevclark/parameter-golf", "sp8192", caseops=False, train_shards=128),
    "sp8192-caseops": Variant("romeerp/parameter-golf-caseops-v1", "sp8192_lossless_caps_caseops_v1_reserved",
                              caseops=True, train_shards=80),
}


def find_variant(name: str) -> tuple[str, Variant]:
    """pgolf's variant name, or the upstream one (`sp8192_lossless_caps_caseops_v1_reserved`, also with its
    `fineweb10B_` folder prefix), -> (pgolf's name, Variant)."""
    bare = name.removeprefix("fineweb10B_")
    for key, spec in VARIANTS.items():
        if bare in (key, spec.name):
            return key, spec
    raise DataError(f"--variant {name!r}: choose one of {', '.join(VARIANTS)} (or their upstream names: "
                    f"{', '.join(v.name for v in VARIANTS.values() if v.name not in VARIANTS)})")


class _Hub:
    """Fetches repo-relative paths from the hub or from a local directory laid out like the repo."""

    def __init__(self, repo_id: str, local_hub: str | Path | None):
        self.repo_id = repo_id
        self.local_hub = Path(local_hub) if local_hub is not None else None

    def where(self, remote: str) -> str:
        return str(self.local_hub / remote) if self.local_hub else f"hf://datasets/{self.repo_id}/{remote}"

    def fetch(self, remote: str) -> Path:
        """A local path holding the file (the local hub's own file or huggingface_hub's cached blob)."""
        if self.local_hub is not None:
            path = self.local_hub / remote
            if not path.is_file():
                raise DataError(f"{path}: not found in the local hub")
            return path
        from huggingface_hub import hf_hub_download

        try:
            # hf_hub_download resumes an interrupted blob and shows a tqdm bar for large files.
            return Path(hf_hub_download(repo_id=self.repo_id, filename=remote, repo_type="dataset")).resolve()
        except Exception as e:  # HTTP, offline, auth and network errors all mean "could not fetch this file"
            raise DataError(f"{self.where(remote)}: download failed ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None


def _hub_plan(hub: _Hub, variant: Variant, train_shards: int) -> tuple[dict, dict, list[tuple[str, str]]]:
    """Read the hub manifest; return (dataset entry, tokenizer entry, [(remote path, local name)])."""
    remote = f"{REMOTE_ROOT}/manifest.json"
    try:
        hub_manifest = json.loads(hub.fetch(remote).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{hub.where(remote)}: not valid JSON") from None
    folder = f"fineweb10B_{variant.name}"
    entry = next((d for d in hub_manifest.get("datasets", []) if d.get("name") == folder), None)
    if entry is None:
        raise DataError(f"{hub.where(remote)}: no dataset named {folder}")
    stats = entry.get("stats") or {}
    num_train, num_val = int(stats.get("files_train", 0)), int(stats.get("files_val", 0))
    if not 0 <= train_shards <= num_train:
        raise DataError(f"--train-shards {train_shards}: {folder} has {num_train} training shards")
    tok_entry = next((t for t in hub_manifest.get("tokenizers", []) if t.get("name") == entry.get("tokenizer_name")),
                     None)
    if tok_entry is None or not tok_entry.get("model_path"):
        raise DataError(f"{hub.where(remote)}: no tokenizer model for {entry.get('tokenizer_name')!r}")
    prefix = f"{REMOTE_ROOT}/datasets/{folder}"
    files = [(f"{prefix}/{shard_name('val', i)}", shard_name("val", i)) for i in range(num_val)]
    if variant.caseops or entry.get("val_bytes_glob"):
        files += [(f"{prefix}/{shard_name('val_bytes', i)}", shard_name("val_bytes", i)) for i in range(num_val)]
    files += [(f"{prefix}/{shard_name('train', i)}", shard_name("train", i)) for i in range(train_shards)]
    model_path = tok_entry["model_path"]
    files.append((f"{REMOTE_ROOT}/{model_path}", Path(model_path).name))
    return entry, tok_entry, files


def _intact(path: Path) -> bool:
    if not path.exists():
        return False
    if path.suffix != ".bin":
        return path.stat().st_size > 0
    try:
        read_header(path)
        return True
    except DataError:
        return False


def _place(src: Path, dest: Path, link: bool) -> None:
    """Put `src` at `dest` under a temporary name first, so `dest` only ever holds a complete file."""
    tmp = dest.with_name(dest.name + ".part")
    tmp.unlink(missing_ok=True)
    try:
        if not link:
            raise OSError
        os.link(src, tmp)  # a hub cache blob on the same disk: 16 GB need not be stored twice
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def _check_target(out_dir: Path, source: dict) -> None:
    manifest = out_dir / MANIFEST_NAME
    if manifest.exists():
        try:
            old = json.loads(manifest.read_text()).get("source", {})
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            old = {}
        same = {k: old.get(k) for k in ("kind", "repo_id", "variant")} == \
            {k: source[k] for k in ("kind", "repo_id", "variant")}
        if not same:
            raise DataError(f"{out_dir}: already holds other data ({manifest.name} source {old or 'unknown'}); "
                            "download into an empty directory")
    # Shards without a manifest are an interrupted download (the manifest is written last): resume it.


def download(variant: str, out_dir: str | Path, train_shards: int | None = None, repo_id: str | None = None,
             local_hub: str | Path | None = None, progress: bool = True) -> dict:
    """Fetch a published dataset into `out_dir` (resumable) and write its pgolf manifest; returns it.

    `train_shards` defaults to the variant's (`Variant.train_shards`)."""
    t0 = time.perf_counter()
    variant, spec = find_variant(variant)
    train_shards = spec.train_shards if train_shards is None else train_shards
    repo = repo_id or spec.repo_id
    out_dir = Path(out_dir)
    source = {"kind": "download", "repo_id": repo, "variant": variant, "dataset": f"fineweb10B_{spec.name}"}
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_target(out_dir, source)
    hub = _Hub(repo, local_hub)
    entry, tok_entry, files = _hub_plan(hub, spec, train_shards)
    num_fetched = 0
    for remote, local in tqdm(files, desc=f"download {variant}", unit="file", disable=None if progress else True):
        dest = out_dir / local
        if _intact(dest):
            continue
        src = hub.fetch(remote)
        if dest.suffix == ".bin":
            read_header(src)  # a damaged upstream file is reported, never placed
        _place(src, dest, link=local_hub is None)  # never tie the files to a user's mirror
        num_fetched += 1
    manifest = _manifest(out_dir, spec, source, entry, tok_entry, files, progress)
    tmp = out_dir / (MANIFEST_NAME + ".part")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, out_dir / MANIFEST_NAME)
    # run facts go to the caller, not into the file: the manifest's hash must not depend on a resume
    return {**manifest, "num_files_fetched": num_fetched, "seconds": round(time.perf_counter() - t0, 3)}


def _count(paths: list[Path]) -> tuple[int, int]:
    """(tokens, BOS tokens) over shards."""
    tokens = docs = 0
    for p in paths:
        toks = read_shard(p)
        tokens += toks.size
        docs += int(np.count_nonzero(toks == BOS_ID))
    return tokens, docs


def _manifest(out_dir: Path, spec: Variant, source: dict, entry: dict, tok_entry: dict,
              files: list[tuple[str, str]], progress: bool) -> dict:
    names = [local for _, local in files]
    tok_name = names[-1]
    tok = DocumentEncoder(out_dir / tok_name, caseops=spec.caseops)
    val = [out_dir / n for n in names if n.startswith("fineweb_val_") and "_bytes_" not in n]
    train = [out_dir / n for n in names if n.startswith("fineweb_train_")]
    num_val_tokens, num_val_docs = _count(val)
    num_train_tokens, num_train_docs = _count(train)
    hashes = {}
    for n in tqdm(names, desc="sha256", unit="file", disable=None if progress else True):
        p = out_dir / n
        hashes[n] = {"sha256": file_sha256(p), "bytes": p.stat().st_size}
    return {
        "format": "pgolf-data-v1",
        "pgolf_version": pgolf.__version__,
        "source": source,
        "corpus_sha256": None,
        "hub_dataset": entry,
        "hub_tokenizer": tok_entry,
        "caseops": spec.caseops,
        "vocab_size": tok.vocab_size,
        "tokenizer": tok_name,
        "tokenizer_sha256": tok.sha256,
        "byte_source": "sidecar" if spec.caseops else "lut",
        "split": {"val": "the challenge's first 50,000 documents", "train": "the rest, in order"},
        "num_val_docs": num_val_docs,
        "num_train_docs": num_train_docs,
        "num_val_tokens": num_val_tokens,
        "num_train_tokens": num_train_tokens,
        "num_val_shards": len(val),
        "num_train_shards": len(train),
        "files": hashes,
    }
