"""The normal form of dataset text: hidden, control and compatibility characters, and look-alike letters."""

from __future__ import annotations

import pytest

from cotaforge.textnorm import MIXED_SCRIPT, NOT_NORMALIZED, mixed_script_words, normalize_text, text_problems


@pytest.mark.parametrize("text, normal", [
    ("la\u200bbel", "label"),  # zero-width space
    ("a\x00b\x07c", "abc"),  # NUL and BEL
    ("\u202eevil", "evil"),  # right-to-left override
    ("soft\u00adhyphen", "softhyphen"),  # a format character
    ("ﬁne", "fine"),  # a compatibility ligature
    ("cafe\u0301", "café"),  # a decomposed accent, composed
    ("one\u2028two", "one\ntwo"),  # a line separator becomes a line feed
    ("tab\tand\nline", "tab\tand\nline"),  # ordinary whitespace stays
    ("crlf\r\nline", "crlf\nline"),
    ("Москва and 東京", "Москва and 東京"),  # other scripts are fine
])
def test_normal_form(text: str, normal: str) -> None:
    assert normalize_text(text) == normal
    assert normalize_text(normal) == normal


@pytest.mark.parametrize("text, code, words", [
    ("The la\u200bbel is clear.", NOT_NORMALIZED, "U+200B ZERO WIDTH SPACE at character 7"),
    ("A knock\x00.", NOT_NORMALIZED, "U+0000 control character"),
    ("\u202eThe answer is B", NOT_NORMALIZED, "RIGHT-TO-LEFT OVERRIDE"),
    ("cafe\u0301", NOT_NORMALIZED, "decomposed form"),
    ("The l\u0430bel is clear.", MIXED_SCRIPT, "'а' (U+0430 CYRILLIC SMALL LETTER A)"),
    ("Α clap", MIXED_SCRIPT, None),  # a Greek capital alpha alone is one script: fine
])
def test_problems_are_named_in_words(text: str, code: str, words: str | None) -> None:
    problems = text_problems(text)
    if words is None:
        assert problems == []
        return
    assert [p.code for p in problems] == [code]
    assert words in problems[0].detail


def test_clean_text_has_no_problems() -> None:
    assert text_problems("Two knocks, then a short clap (about 0.6 s).\nSo the answer is B.") == []
    assert text_problems("line one\r\nline two") == []  # browsers send CRLF; it is no hidden text
    assert mixed_script_words("Москва, café, naïve, Straße") == []
    assert mixed_script_words("pаypal and gооgle") == ["pаypal", "gооgle"]
