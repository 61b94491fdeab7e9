"""Tokenizer: the challenge recipe, deterministic training, and byte counts that sum to the original text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.caseops import OPERATORS
from pgolf.corpus import embedded_corpus, has_text
from pgolf.encoding import DocumentEncoder
from pgolf.errors import DataError
from pgolf.prepare import train_sentencepiece
from pgolf.tokenizer import BOS_ID, EOS_ID, Tokenizer, file_sha256

TRICKY = [
    "Hello World",
    "  leading and trailing whitespace \n\t ",
    "many    spaces\tand\ttabs\n\n\nand blank lines",
    "NFKC: \ufb01ne \u2460 \uff21\uff22 \u00bd",   # ligature, circled one, fullwidth AB, one half
    "emoji \U0001f600 and CJK \u4e2d\u6587 via byte fallback",
    "literal operators \ue001\ue002\ue003\ue004 inside TEXT",
    "iPhone McDonald NASA I",
    "digits 1234567890 split",
    "x",
]


@pytest.fixture(scope="module")
def tok(tiny_data):
    return DocumentEncoder(tiny_data / "tokenizer.model", caseops=True)


def test_recipe_special_ids(tok):
    sp = tok.sp
    assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<s>", "</s>", "<unk>"]
    assert [sp.id_to_piece(4 + i) for i in range(4)] == list(OPERATORS)
    assert sp.is_byte(8) and sp.id_to_piece(8) == "<0x00>"
    assert tok.vocab_size == 512 and len(tok.sha256) == 64


@pytest.mark.parametrize("text", TRICKY)
def test_bytes_sum_to_original_utf8(tok, text):
    ids, counts = tok.encode_doc(text)
    assert ids[0] == BOS_ID and EOS_ID not in ids and BOS_ID not in ids[1:]
    assert len(ids) == len(counts) and counts[0] == 0 and min(counts) >= 0
    assert sum(counts) == len(text.encode("utf-8"))


def test_operators_cost_zero_bytes_and_escaped_chars_their_own(tok):
    ids, counts = tok.encode_doc("Hi")
    assert ids[1] == 4 and counts[1] == 0  # TITLE
    ids, counts = tok.encode_doc("\ue001")
    assert ids[1:] == [7, 4] and counts[1:] == [0, 3]  # ESC (0 bytes) then the literal U+E001 (3 UTF-8 bytes)


def test_decode_inverts_encode_on_normalized_text(tok):
    text = "The QUICK brown Fox said: iPhone 42 \ue002 costs \u00e9t\u00e9."
    assert tok.decode_doc(tok.encode_doc(text)[0]) == text


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=60).filter(has_text))
def test_bytes_sum_property(tok, s):
    assert sum(tok.encode_doc(s)[1]) == len(s.encode("utf-8"))


def test_sidecar_total_on_every_embedded_doc(tok):
    docs = embedded_corpus()
    encoded = tok.encode_docs(docs)
    bad = [i for i, (d, (_, counts)) in enumerate(zip(docs, encoded)) if sum(counts) != len(d.encode("utf-8"))]
    assert bad == []


def test_training_is_deterministic_and_plain_models_have_no_operators(tmp_path):
    texts = embedded_corpus()[:150]
    a = train_sentencepiece(texts, 400, tmp_path / "a.model", caseops=False)
    b = train_sentencepiece(texts, 400, tmp_path / "b.model", caseops=False)
    assert file_sha256(a) == file_sha256(b)
    plain = DocumentEncoder(a, caseops=False)
    assert plain.sp.id_to_piece(4) == "<0x00>"
    ids, counts = plain.encode_doc("Hello  World ")
    assert sum(counts) == len("Hello  World ") and plain.decode_doc(ids) == "Hello World"
    with pytest.raises(DataError, match="CaseOps operator U\\+E001 is not token 4"):
        DocumentEncoder(a, caseops=True)


def test_bad_model_and_vocab(tmp_path):
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(DataError, match="not a SentencePiece model"):
        Tokenizer(tmp_path / "junk.model")
    with pytest.raises(DataError, match="vocab_size 100 is out of range"):
        train_sentencepiece(["some text"], 100, tmp_path / "m.model", caseops=True)
