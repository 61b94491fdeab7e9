"""Codecs: every coder and spec roundtrips bit-exactly; shuffle is a permutation with an inverse."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.errors import ArtifactError
from pgolf.quant import codecs

PAYLOADS = {
    "empty": b"",
    "one": b"\x7f",
    "odd": bytes(range(256)) * 3 + b"\x01",
    "random": os.urandom(4099),
    "fp16ish": np.random.default_rng(0).standard_normal(3001).astype(np.float16).tobytes(),
}


@pytest.mark.parametrize("codec", codecs.available_codecs())
@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_codec_roundtrip_bit_exact(codec, name):
    data = PAYLOADS[name]
    blob = codecs.compress(data, codec)
    assert codecs.decompress(blob, codec) == data


def test_compressible_data_shrinks():
    data = bytes(20_000)
    for codec in codecs.available_codecs():
        assert len(codecs.compress(data, codec)) < 400, codec


@pytest.mark.parametrize("stride", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("n", [0, 1, 2, 7, 16, 1001])
def test_shuffle_inverse(stride, n):
    data = os.urandom(n)
    shuffled = codecs.byte_shuffle(data, stride)
    assert len(shuffled) == n and sorted(shuffled) == sorted(data)
    assert codecs.byte_unshuffle(shuffled, stride) == data


def test_shuffle_groups_byte_planes():
    data = bytes([1, 2, 1, 2, 1, 2, 9])
    assert codecs.byte_shuffle(data, 2) == bytes([1, 1, 1, 2, 2, 2, 9])


@pytest.mark.parametrize("spec", ["shuffle2+brotli", "shuffle4+lzma", "shuffle2+zstd", "raw"])
def test_spec_roundtrip(spec):
    data = PAYLOADS["fp16ish"]
    assert codecs.decompress_spec(codecs.compress_spec(data, spec), spec) == data


def test_compress_best_keeps_smallest():
    data = PAYLOADS["fp16ish"]
    specs = ["raw", "zstd", "brotli", "shuffle2+brotli"]
    spec, blob = codecs.compress_best(data, specs)
    assert len(blob) == min(len(codecs.compress_spec(data, s)) for s in specs)
    assert codecs.decompress_spec(blob, spec) == data


def test_unknown_codec_and_corrupt_stream_raise():
    with pytest.raises(ArtifactError, match="unknown codec"):
        codecs.compress(b"x", "gzip")
    with pytest.raises(ArtifactError, match="unknown step"):
        codecs.compress_spec(b"x", "shuffle2+gzip")
    with pytest.raises(ArtifactError, match="corrupt"):
        codecs.decompress(b"not brotli at all", "brotli")


def test_lrzip_missing_is_reported_with_fallback(monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(codecs.shutil, "which", lambda name: None if name == "lrzip" else real_which(name))
    assert "lrzip" not in codecs.available_codecs()
    assert codecs.lrzip_fallback_note() == f"lrzip not found, using {codecs.fallback_codec()}"
    assert codecs.lrzip_fallback_note("zstd") == "lrzip not found, using zstd"
    assert codecs.fallback_codec() in codecs.available_codecs()
    assert "lrzip" not in codecs.entropy_coder_specs()
    with pytest.raises(ArtifactError, match="lrzip not found"):
        codecs.compress(b"abc", "lrzip")


@pytest.mark.skipif(not codecs.lrzip_available(), reason="lrzip binary not installed (apt-get install lrzip)")
def test_lrzip_roundtrip_when_installed():
    data = np.random.default_rng(1).integers(-31, 32, 50_000).astype(np.int8).tobytes()
    blob = codecs.compress(data, "lrzip")
    assert codecs.decompress(blob, "lrzip") == data
    assert codecs.lrzip_fallback_note() is None


def test_order0_entropy():
    assert codecs.order0_entropy_bits(np.zeros(100, np.int8)) == 0.0
    assert codecs.order0_entropy_bits(np.arange(256).astype(np.uint8)) == pytest.approx(8.0)
    assert codecs.order0_entropy_bits(np.array([0, 1, 0, 1])) == pytest.approx(1.0)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=3000), stride=st.integers(1, 9),
       codec=st.sampled_from(["brotli", "lzma", "zstd", "raw"]))
def test_property_spec_roundtrip(data, stride, codec):
    spec = f"shuffle{stride}+{codec}"
    assert codecs.byte_unshuffle(codecs.byte_shuffle(data, stride), stride) == data
    assert codecs.decompress_spec(codecs.compress_spec(data, spec), spec) == data
