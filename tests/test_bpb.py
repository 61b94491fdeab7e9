"""Byte accounting and the BpbMeter: exact totals, the LUT rule, and the uniform-model golden value."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pgolf.bpb import BpbMeter, build_byte_luts, lut_token_bytes
from pgolf.corpus import embedded_corpus
from pgolf.data import load_val
from pgolf.encoding import DocumentEncoder
from pgolf.prepare import train_sentencepiece


def test_uniform_logits_score_log2_vocab_per_token(tiny_data):
    val = load_val(tiny_data)
    vocab = 512
    targets = val.tokens[1:]
    nll = F.cross_entropy(torch.zeros(targets.numel(), vocab, dtype=torch.float64), targets, reduction="none")
    meter = BpbMeter()
    for chunk in range(0, targets.numel(), 4096):  # accumulate in pieces, like an evaluator
        meter.add(nll[chunk:chunk + 4096], val.token_bytes[1:][chunk:chunk + 4096])
    meter.all_reduce()  # world size 1: a no-op
    expected = math.log2(vocab) * val.num_targets / val.target_bytes_total
    assert meter.num_tokens == val.num_targets and meter.sum_bytes == val.target_bytes_total
    assert meter.bpb() == pytest.approx(expected, rel=1e-12)
    assert meter.loss() == pytest.approx(math.log(vocab), rel=1e-12)


def test_meter_state_merge_and_float64():
    a, b = BpbMeter(), BpbMeter()
    assert math.isnan(a.bpb()) and a.num_tokens == 0
    a.add(torch.full((3,), 2.0, dtype=torch.bfloat16), torch.tensor([1, 2, 3], dtype=torch.int32))
    b.add(torch.tensor([1e-9]), torch.tensor([4]))
    total = BpbMeter.from_state(a.state()).merge(b)
    assert total.sum_nats == pytest.approx(6.0 + 1e-9, abs=1e-15) and total.sum_bytes == 10 and total.num_tokens == 4
    assert total.bpb() == pytest.approx((6.0 + 1e-9) / (math.log(2) * 10), rel=1e-14)
    with pytest.raises(AssertionError):
        a.add(torch.zeros(2), torch.zeros(3))


def test_lut_rule_on_synthetic_table():
    # ids: 0 control, 1 BOS (control), 2 "ab", 3 "▁cd", 4 a byte piece
    luts = (np.array([0, 0, 2, 2, 1], np.int32), np.array([0, 0, 0, 1, 0], bool), np.array([1, 1, 0, 0, 0], bool))
    got = lut_token_bytes(np.array([1, 3, 2, 3, 4, 1, 3]), luts)
    #                   BOS  ▁cd after BOS: no space byte; ab; ▁cd: 3; byte 1; BOS 0; ▁cd after BOS: 2
    assert got.tolist() == [0, 2, 2, 3, 1, 0, 2] and got.dtype == np.int32
    with pytest.raises(ValueError, match="outside the tokenizer's vocabulary"):
        lut_token_bytes(np.array([5]), luts)


@pytest.fixture(scope="module")
def plain_tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("sp") / "plain.model"
    return DocumentEncoder(train_sentencepiece(embedded_corpus()[:200], 400, path, caseops=False), caseops=False)


def test_build_luts_from_model(plain_tok):
    sp = plain_tok.sp
    base, space, boundary = build_byte_luts(sp)
    assert base.shape == (sp.vocab_size(),) and boundary[:4].all() and not boundary[4:].any()
    assert (base[4:260] == 1).all()  # byte-fallback pieces
    for i in range(260, sp.vocab_size()):
        piece = sp.id_to_piece(i)
        assert space[i] == piece.startswith("\u2581")
        assert base[i] == len(piece.lstrip("\u2581").encode()) or piece == "\u2581" * len(piece)


def test_lut_matches_original_bytes_on_normalized_ascii(plain_tok):
    # On text the normalizer leaves alone (ASCII, single spaces) the LUT and the surface walk agree per token,
    # except that byte-fallback pieces are split differently; the per-document totals always agree.
    luts = build_byte_luts(plain_tok.sp)
    for text in ["hello world, this is a test of the byte rule", "Return the value x + 1 for 42 inputs.",
                 "digits 2026 and (parens)"]:
        ids, counts = plain_tok.encode_doc(text)
        lut = lut_token_bytes(np.array(ids), luts)
        assert lut.tolist() == counts and lut.sum() == len(text.encode())
