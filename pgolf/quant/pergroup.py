"""The record's per-group layout: int8 weight matrices regrouped so entropy coders see alike bytes.

Why it helps: a general-purpose coder models bytes by their recent context. The
int8 codes of, say, every `mlp.fc` matrix share one distribution and similar
row patterns, so the record

1. buckets the int8 q-tensors by *role* (`tok_emb, c_k, c_q, c_v, attn.proj,
   mlp.fc, mlp.proj`), the layers concatenated in order, one stream per group;
2. reorders the rows of `tok_emb`, `c_q` and `mlp.fc` by a greedy
   nearest-neighbour chain under L1 distance, so neighbouring rows are similar
   (the permutation is stored, uint16);
3. transposes each matrix before concatenating, so a run of bytes walks down a
   column (one input channel across similar rows), which is smoother than a row;
4. compresses each group with the best coder available (lrzip ZPAQ in the
   record; here every candidate is tried and the smallest kept, per group).

The sort pays for itself only on trained weights: a permutation costs ~11 bits
per row, and near-random codes (a barely trained model) gain nothing from it.
So the writer also codes each sortable group unsorted and keeps the sorted
version only where it is smaller including its permutation (`select_sorting`).

Everything that is not a role matrix (scales, LQER factors, passthroughs) is
returned as `rest` for the container to serialize into its remainder stream.
`split_groups` and `merge_groups` are exact inverses.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from pgolf.quant import codecs

ROLES = ("tok_emb", "attn.c_k", "attn.c_q", "attn.c_v", "attn.proj", "mlp.fc", "mlp.proj")
"""Group order, as the record writes them."""

SIMSORT_ROLES = frozenset({"tok_emb", "attn.c_q", "mlp.fc"})
"""Roles whose rows get the L1 similarity order (the record's choice: the widest / most rows)."""

# `blocks.3.mlp.fc.weight` or the quantizer's code tensor `blocks.3.mlp.fc.weight.q` (pgolf.quant.mixed).
# Other int8 tensors of a role (LQER factors `.lqA_a`, ...) are tiny and go to the remainder, as in the record.
_ROLE_RE = re.compile(r"^(?:blocks\.(\d+)\.)?(" + "|".join(re.escape(r) for r in ROLES) + r")\.weight(\.q)?$")


def role_of(name: str, t: torch.Tensor) -> tuple[str, int, str] | None:
    """(role, layer, suffix) for an int8 matrix that belongs to a role group, else None.

    Only 2-D int8 tensors qualify: those are the q-codes. The suffix ("" or
    ".q") is part of the group key, so a raw int8 matrix and a q-code of the
    same role never share a stream.
    """
    if t.dtype != torch.int8 or t.dim() != 2 or t.numel() == 0:
        return None
    m = _ROLE_RE.match(name)
    if m is None:
        return None
    layer = int(m.group(1)) if m.group(1) is not None else -1
    if (m.group(2) == "tok_emb") != (m.group(1) is None):
        return None  # tok_emb lives at the top level, every other role inside a block
    return m.group(2), layer, m.group(3) or ""


def similarity_order_l1(rows: np.ndarray) -> np.ndarray:
    """Greedy nearest-neighbour chain: start at row 0, repeatedly hop to the closest unused row (L1).

    O(n^2 d); the remaining rows are kept compacted (swap-remove) so each hop
    scans only what is left. Exact ties go to the lowest original row index, as
    in the record: int8 rows tie often, and any other rule gives a different
    permutation, so different stream bytes, from the same matrix.
    Returns the visiting order (a permutation of range(n)) as int64.
    """
    n = rows.shape[0]
    if n <= 2:
        return np.arange(n, dtype=np.int64)
    pool = rows.astype(np.int16)           # int8 differences fit in int16
    ids = np.arange(n, dtype=np.int64)
    order = np.empty(n, dtype=np.int64)
    cur = pool[0].copy()
    order[0] = 0
    live = n - 1
    pool[0], ids[0] = pool[live], ids[live]  # drop row 0 from the live prefix
    for k in range(1, n):
        dist = np.abs(pool[:live] - cur).sum(axis=1, dtype=np.int32)
        ties = np.flatnonzero(dist == dist.min())
        j = int(ties[ids[ties].argmin()])  # swap-remove scrambles positions; break ties on the row index
        order[k] = ids[j]
        cur = pool[j].copy()
        live -= 1
        pool[j], ids[j] = pool[live], ids[live]
    return order


@dataclass
class PerGroupSplit:
    """Raw (uncompressed) per-group streams plus what is needed to undo them."""

    groups: dict[str, bytes]
    """group key (role + suffix) -> concatenated transposed int8 matrices."""
    layout: list[dict]
    """One entry per grouped tensor, in stream order: name, group, shape, sorted."""
    perms: bytes
    """The stored row permutations of sorted matrices, concatenated (dtype in `perm_dtype`)."""
    perm_dtype: str
    rest: dict[str, torch.Tensor] = field(default_factory=dict)


def split_groups(tensors: dict[str, torch.Tensor], simsort: bool = True) -> PerGroupSplit:
    """Bucket the role matrices into group streams; everything else goes to `rest`."""
    members: dict[str, list[tuple[int, str]]] = {}
    rest: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        r = role_of(name, t)
        if r is None:
            rest[name] = t
            continue
        role, layer, suffix = r
        members.setdefault(role + suffix, []).append((layer, name))
    max_rows = max((tensors[n].shape[0] for ms in members.values() for _, n in ms), default=0)
    perm_dtype = np.uint16 if max_rows <= 65536 else np.uint32
    groups: dict[str, bytes] = {}
    layout: list[dict] = []
    perm_parts: list[bytes] = []
    # Role order first (as the record), suffix variants after their role; layers ascending.
    def group_rank(key: str) -> tuple[int, str]:
        role = next(r for r in ROLES if key == r or key.startswith(r + "."))
        return ROLES.index(role), key

    for key in sorted(members, key=group_rank):
        parts = []
        for _, name in sorted(members[key]):
            m = tensors[name].detach().cpu().contiguous().numpy()
            role = role_of(name, tensors[name])[0]
            sort = simsort and role in SIMSORT_ROLES
            if sort:
                order = similarity_order_l1(m)
                m = m[order]
                # The inverse permutation is what decoding needs; storing it saves an argsort there.
                perm_parts.append(order.astype(perm_dtype).tobytes())
            parts.append(np.ascontiguousarray(m.T).tobytes())
            layout.append({"name": name, "group": key, "shape": list(m.shape), "sorted": sort})
        groups[key] = b"".join(parts)
    return PerGroupSplit(groups=groups, layout=layout, perms=b"".join(perm_parts),
                         perm_dtype=np.dtype(perm_dtype).name, rest=rest)


def merge_groups(split: PerGroupSplit) -> dict[str, torch.Tensor]:
    """Exact inverse of `split_groups`: the grouped int8 matrices back, plus `rest`."""
    out: dict[str, torch.Tensor] = {}
    offsets = {key: 0 for key in split.groups}
    perm_dtype = np.dtype(split.perm_dtype)
    perm_off = 0
    for entry in split.layout:
        rows, cols = entry["shape"]
        key = entry["group"]
        n_bytes = rows * cols
        buf = split.groups[key][offsets[key]:offsets[key] + n_bytes]
        assert len(buf) == n_bytes, f"group {key} is short for {entry['name']}"
        offsets[key] += n_bytes
        m = np.frombuffer(buf, dtype=np.int8).reshape(cols, rows).T
        if entry["sorted"]:
            n_perm = rows * perm_dtype.itemsize
            order = np.frombuffer(split.perms[perm_off:perm_off + n_perm], dtype=perm_dtype).astype(np.int64)
            perm_off += n_perm
            unsorted = np.empty_like(m)
            unsorted[order] = m
            m = unsorted
        out[entry["name"]] = torch.from_numpy(m.copy(order="C"))  # own, writable memory (frombuffer is read-only)
    assert all(offsets[k] == len(v) for k, v in split.groups.items()), "group stream has trailing bytes"
    assert perm_off == len(split.perms), "permutation stream has trailing bytes"
    out.update(split.rest)
    return out


def group_perm_bytes(split: PerGroupSplit) -> dict[str, bytes]:
    """The stored permutations of each group (empty for groups with no sorted matrix)."""
    itemsize = np.dtype(split.perm_dtype).itemsize
    out: dict[str, bytes] = {key: b"" for key in split.groups}
    off = 0
    for entry in split.layout:
        if entry["sorted"]:
            n = entry["shape"][0] * itemsize
            out[entry["group"]] += split.perms[off:off + n]
            off += n
    return out


def select_sorting(sorted_split: PerGroupSplit, plain_split: PerGroupSplit, keep_sorted: set[str]) -> PerGroupSplit:
    """Per group, the similarity-sorted layout (groups in `keep_sorted`) or the plain one.

    Both splits come from the same tensors, so their layouts list the same matrices
    in the same order and differ only in the `sorted` flag.
    """
    itemsize = np.dtype(sorted_split.perm_dtype).itemsize
    layout, perms, off = [], [], 0
    for e_sorted, e_plain in zip(sorted_split.layout, plain_split.layout, strict=True):
        assert e_sorted["name"] == e_plain["name"] and not e_plain["sorted"]
        n = e_sorted["shape"][0] * itemsize if e_sorted["sorted"] else 0
        if e_sorted["group"] in keep_sorted:
            layout.append(e_sorted)
            perms.append(sorted_split.perms[off:off + n])
        else:
            layout.append(e_plain)
        off += n
    groups = {k: sorted_split.groups[k] if k in keep_sorted else plain_split.groups[k] for k in sorted_split.groups}
    return PerGroupSplit(groups=groups, layout=layout, perms=b"".join(perms), perm_dtype=sorted_split.perm_dtype,
                         rest=sorted_split.rest)


def compress_groups(groups: dict[str, bytes], specs: list[str] | None = None,
                    max_workers: int | None = None) -> dict[str, tuple[str, bytes]]:
    """Each group with the smallest of the candidate coders: group -> (spec, blob).

    Every (group, coder) pair runs in its own thread (as the record runs its lrzip
    processes): lrzip is a subprocess and lzma / brotli / zstd release the GIL, so
    the wall time is about that of the slowest pair when there are enough cores.
    Ties go to the earlier spec, as in `codecs.compress_best`.
    """
    specs = list(specs or codecs.entropy_coder_specs())
    jobs = [(key, spec) for key in groups for spec in specs]
    workers = max_workers or max(1, min(len(jobs), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        blobs = dict(zip(jobs, pool.map(lambda job: codecs.compress_spec(groups[job[0]], job[1]), jobs)))
    out: dict[str, tuple[str, bytes]] = {}
    for key in groups:
        best = min(specs, key=lambda spec: (len(blobs[key, spec]), specs.index(spec)))
        out[key] = (best, blobs[key, best])
    return out
