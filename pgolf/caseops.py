"""CaseOps: a lossless case transform that lets the tokenizer see lowercase words.

Capitalisation is moved out of the letters into four reserved operator
characters (private-use code points, user-defined symbols in SentencePiece so
each is always one token). The transform works on maximal runs of ASCII
letters `[A-Za-z]+`:

    word          -> word                        all lowercase: unchanged
    WORD (len>=2) -> ALLCAPS word
    Word, W       -> TITLE word, TITLE w
    iPhone        -> i CAPNEXT phone             other mixed case: optional TITLE,
    McDonald      -> TITLE mc CAPNEXT donald     then CAPNEXT before each later capital

A literal operator character in the input is escaped as ESC + char, so
`decode(encode(s)) == s` for every Unicode string. Non-ASCII text is untouched.
The byte sidecar (`pgolf.bpb`) charges operators 0 bytes, so bits per byte are
still measured against the original text.
"""

from __future__ import annotations

import re

TITLE = "\ue001"
ALLCAPS = "\ue002"
CAPNEXT = "\ue003"
ESC = "\ue004"
OPERATORS = (TITLE, ALLCAPS, CAPNEXT, ESC)

_ENCODE_RE = re.compile(r"[A-Za-z]+|[\ue001-\ue004]")
# An ESC protects the next character whatever it is; the other operators only
# ever precede the lowercase letters the encoder wrote after them.
_DECODE_RE = re.compile(r"\ue004(.)|\ue002([a-z]+)|[\ue001\ue003]([a-z])", re.DOTALL)


def _encode_word(word: str) -> str:
    if word.islower():
        return word
    if len(word) >= 2 and word.isupper():
        return ALLCAPS + word.lower()
    out = [TITLE + word[0].lower()] if word[0].isupper() else [word[0]]
    for ch in word[1:]:
        out.append(CAPNEXT + ch.lower() if ch.isupper() else ch)
    return "".join(out)


def _encode_match(m: re.Match) -> str:
    s = m.group(0)
    if s in OPERATORS:
        return ESC + s
    return _encode_word(s)


def encode(text: str) -> str:
    """Apply the CaseOps transform (see the module docstring)."""
    return _ENCODE_RE.sub(_encode_match, text)


def _decode_match(m: re.Match) -> str:
    escaped, allcaps, single = m.groups()
    if escaped is not None:
        return escaped
    if allcaps is not None:
        return allcaps.upper()
    return single.upper()


def decode(text: str) -> str:
    """Exact inverse of `encode`; operators that `encode` could not have produced are kept as they are."""
    return _DECODE_RE.sub(_decode_match, text)

