"""CaseOps: the documented encodings, and decode(encode(s)) == s for any Unicode string."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.caseops import ALLCAPS, CAPNEXT, ESC, OPERATORS, TITLE, decode, encode
from pgolf.corpus import embedded_corpus


def test_operator_code_points():
    assert (TITLE, ALLCAPS, CAPNEXT, ESC) == ("\ue001", "\ue002", "\ue003", "\ue004") == OPERATORS


def test_documented_cases():
    assert encode("hello world") == "hello world"
    assert encode("NASA") == ALLCAPS + "nasa"
    assert encode("Hello") == TITLE + "hello"
    assert encode("I") == TITLE + "i"
    assert encode("iPhone") == "i" + CAPNEXT + "phone"
    assert encode("McDonald") == TITLE + "mc" + CAPNEXT + "donald"
    assert encode("HeLLo") == TITLE + "he" + CAPNEXT + "l" + CAPNEXT + "lo"
    assert encode("x" + TITLE + "y") == "x" + ESC + TITLE + "y"
    assert encode(ESC) == ESC + ESC
    # maximal ASCII runs: digits, underscores and non-ASCII letters split words and are left alone
    assert encode("ABC1Def_gH") == ALLCAPS + "abc1" + TITLE + "def_g" + CAPNEXT + "h"
    assert encode("ÉCOLE Ünïcode") == "É" + ALLCAPS + "cole Ü" + "n" + "ï" + "code"


def test_no_uppercase_ascii_survives():
    assert not re.search("[A-Z]", encode("The QUICK bRoWn Fox, I said. ABCdef aBC"))


def test_lowercase_text_is_a_fixed_point():
    s = "only lowercase, digits 123 and ünïcöde ☃"
    assert encode(s) == s and decode(s) == s


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_roundtrip_arbitrary_unicode(s):
    assert decode(encode(s)) == s


_tricky = st.text(alphabet=st.sampled_from(list("aAzZbB ._1é\n") + list(OPERATORS)), max_size=40)


@settings(max_examples=500, deadline=None)
@given(_tricky)
def test_roundtrip_letters_and_literal_operators(s):
    e = encode(s)
    assert decode(e) == s
    assert not re.search("[A-Z]", e)


def test_roundtrip_embedded_corpus():
    docs = embedded_corpus()
    assert all(decode(encode(d)) == d for d in docs)
    assert sum(encode(d) != d for d in docs) > len(docs) // 2  # the transform actually did something
