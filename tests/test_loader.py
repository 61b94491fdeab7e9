"""Document-packing loader and calibration sampler: exact cursor arithmetic on synthetic shards.

Shard tokens encode their own position (value = 2 + position mod 60000, with BOS = 1 at chosen
places), so every test can tell exactly which span of which shard a batch came from.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgolf.errors import DataError
from pgolf.loader import BOS_ID, CalibrationSampler, DocumentPackingLoader, build_cu_seqlens
from pgolf.shards import write_shard


def _shard(path, num_tokens: int, bos_every: int, first_bos: int, offset: int = 0):
    tokens = 2 + (np.arange(num_tokens) + offset) % 60000
    tokens[first_bos::bos_every] = BOS_ID
    write_shard(path, tokens)
    return tokens


@pytest.fixture
def shards(tmp_path):
    """Three shards of 1000, 700 and 1200 tokens; their first BOS at 3, 0 and 10."""
    specs = [(1000, 50, 3, 0), (700, 40, 0, 100_000), (1200, 64, 10, 200_000)]
    paths, arrays = [], []
    for i, (n, every, first, off) in enumerate(specs):
        p = tmp_path / f"fineweb_train_{i:06d}.bin"
        arrays.append(_shard(p, n, every, first, off))
        paths.append(p)
    return paths, arrays


# --------------------------------------------------------------------------- cu_seqlens
def test_cu_seqlens_starts_at_every_bos_and_pads_with_the_row_length():
    x = torch.tensor([5, 6, BOS_ID, 7, 8, 9, BOS_ID, 4])
    cu, max_seqlen = build_cu_seqlens(x, max_doc_len=0, bucket=64)
    assert cu.dtype == torch.int32 and cu.numel() == 64
    assert cu[:4].tolist() == [0, 2, 6, 8]  # the partial doc before the first BOS is a segment too
    assert torch.all(cu[4:] == 8)
    assert max_seqlen == 4


def test_cu_seqlens_splits_long_documents_at_the_cap():
    x = torch.full((100,), 9)
    x[0], x[30] = BOS_ID, BOS_ID
    cu, max_seqlen = build_cu_seqlens(x, max_doc_len=16, bucket=8)
    bounds = sorted(set(cu.tolist()))
    assert bounds == [0, 16, 30, 46, 62, 78, 94, 100]
    assert max_seqlen == 16
    assert cu.numel() % 8 == 0 and cu.numel() >= len(bounds)


def test_cu_seqlens_bucket_boundary_exactly_full():
    x = torch.full((64,), 9)
    x[::1] = BOS_ID  # 64 one-token docs -> 65 boundaries -> padded to 128
    cu, _ = build_cu_seqlens(x, max_doc_len=0, bucket=64)
    assert cu.numel() == 128 and cu[64].item() == 64


# --------------------------------------------------------------------------- packing loader
def test_batches_are_shifted_pairs_from_the_first_bos(shards):
    paths, arrays = shards
    loader = DocumentPackingLoader(paths, rank=0, world_size=1, local_tokens=63, device="cpu")
    x, y, cu, max_seqlen = loader.next_batch(32)
    assert x.shape == y.shape == (1, 63)
    assert torch.equal(x[0], torch.from_numpy(arrays[0][3:66].astype(np.int64)))
    assert torch.equal(y[0, :-1], x[0, 1:])
    assert max_seqlen == 32
    expected, _ = build_cu_seqlens(x[0], 32)
    assert torch.equal(cu, expected)


def test_two_batches_stay_reserved_ahead_and_a_cap_change_skips_them(shards):
    paths, arrays = shards
    span = 64  # world 1 x (63 + 1)
    loader = DocumentPackingLoader(paths, 0, 1, 63, "cpu")
    loader.next_batch(32)
    assert loader.cursor == 3 + 3 * span  # consumed one, two queued
    x2, *_ = loader.next_batch(32)
    assert x2[0, 0].item() == arrays[0][3 + span]
    x3, *_ = loader.next_batch(16)  # new cap: the queued spans 2 and 3 are dropped, span 4 is next
    assert x3[0, 0].item() == arrays[0][3 + 4 * span]
    assert loader.max_seq_len == 16


def test_ranks_take_consecutive_slices_of_one_global_span(shards):
    paths, arrays = shards
    rows = [DocumentPackingLoader(paths, r, 2, 31, "cpu").next_batch(8)[0][0] for r in range(2)]
    single = DocumentPackingLoader(paths, 0, 1, 31, "cpu")
    first = single.next_batch(8)[0][0]
    second = single.next_batch(8)[0][0]
    assert torch.equal(rows[0], first) and torch.equal(rows[1], second)
    assert rows[1][0].item() == arrays[0][3 + 32]


def test_shard_tails_are_dropped_and_reading_wraps(shards):
    paths, arrays = shards
    span = 200
    loader = DocumentPackingLoader(paths, 0, 1, span - 1, "cpu")
    starts = []
    for _ in range(14):
        x, *_ = loader.next_batch(span - 1)
        starts.append(int(x[0, 0]))
    # shard 0: first BOS 3, spans at 3, 203, ..., 603 (803 + 200 > 1000); shard 1 (700): 0..400;
    # shard 2 (1200): 10..810; then shard 0 again.
    expected = ([arrays[0][s] for s in (3, 203, 403, 603)] + [arrays[1][s] for s in (0, 200, 400)]
                + [arrays[2][s] for s in (10, 210, 410, 610, 810)] + [arrays[0][s] for s in (3, 203)])
    assert starts == [int(v) for v in expected]
    assert loader.num_wraps == 1


def test_state_roundtrip_continues_identically(shards):
    paths, _ = shards
    a = DocumentPackingLoader(paths, 1, 2, 47, "cpu")
    for cap in (16, 16, 48, 16):
        a.next_batch(cap)
    b = DocumentPackingLoader(paths, 1, 2, 47, "cpu")
    b.load_state(a.state())
    for cap in (16, 48, 48, 48, 48, 48):
        xa, ya, ca, ma = a.next_batch(cap)
        xb, yb, cb, mb = b.next_batch(cap)
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ca, cb) and ma == mb


def test_state_for_other_geometry_is_refused(shards):
    paths, _ = shards
    state = DocumentPackingLoader(paths, 0, 1, 63, "cpu").state()
    with pytest.raises(DataError, match="world size"):
        DocumentPackingLoader(paths, 0, 2, 63, "cpu").load_state(state)


def test_shard_without_bos_and_spans_too_large_are_data_errors(tmp_path):
    p = tmp_path / "fineweb_train_000000.bin"
    write_shard(p, np.full(100, 7))
    with pytest.raises(DataError, match="no BOS"):
        DocumentPackingLoader([p], 0, 1, 10, "cpu")
    _shard(p, 100, 10, 0)
    loader = DocumentPackingLoader([p], 0, 1, 150, "cpu")
    with pytest.raises(DataError, match="too small"):
        loader.next_batch(50)


# --------------------------------------------------------------------------- calibration sampler
def test_calibration_windows_are_contiguous_and_rank_seeded(shards):
    paths, arrays = shards
    a = CalibrationSampler(paths, rank=0, world_size=2, seq_len=32)
    assert [p.name for p in a.files] == [paths[0].name, paths[2].name]  # ranks stride the shards
    batch = a.next_batch(6)
    assert batch.shape == (6, 32) and batch.dtype == torch.int64
    source = np.concatenate([arrays[0], arrays[2]])
    for row in batch.numpy():
        hits = [i for i in range(len(source) - 32) if np.array_equal(source[i:i + 32], row)]
        assert hits, "every window must be a contiguous stretch of one shard"
    again = CalibrationSampler(paths, 0, 2, 32).next_batch(6)
    assert torch.equal(batch, again)
    other = CalibrationSampler(paths, 1, 2, 32)
    assert [p.name for p in other.files] == [paths[1].name]
    assert not torch.equal(other.next_batch(6), batch)


def test_calibration_refills_after_every_window_is_used(tmp_path):
    p = tmp_path / "fineweb_train_000000.bin"
    _shard(p, 100, 10, 0)
    s = CalibrationSampler([p], 0, 1, seq_len=30)
    rows = s.next_batch(7)  # only 2-3 windows of 30 fit: the sampler must re-cut the shard
    assert rows.shape == (7, 30)
    with pytest.raises(DataError, match="do not fit"):
        CalibrationSampler([p], 0, 1, seq_len=100)
