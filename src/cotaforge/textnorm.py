"""The normal form of text that enters the dataset, and what keeps text from it.

Normal form: Unicode NFKC, then no control, format, private-use, surrogate or unassigned characters other
than ordinary whitespace (space, tab, line feed); line and paragraph separators become line feeds. Hidden
characters (a zero-width space inside "label", an RTL override, a NUL) would otherwise slip past every
word check and into the dataset. Text must also not mix look-alike scripts inside one word ("lаbel" with a
Cyrillic "а"): normalisation cannot repair that, so it is refused. The review app and the validate stage
apply the same rules (`text_problems`).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

# Reason codes, shared by the validate stage and the review app.
NOT_NORMALIZED = "text_not_normalized"
MIXED_SCRIPT = "mixed_script_word"
_KEPT_WHITESPACE = {" ", "\t", "\n"}
_DROPPED_CATEGORIES = {"Cc", "Cf", "Co", "Cs", "Cn"}
# Scripts whose letters look alike; a word using two of them is a homoglyph trick, not a language.
_CONFUSABLE_SCRIPTS = ("LATIN", "CYRILLIC", "GREEK", "ARMENIAN", "CHEROKEE", "COPTIC")
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class TextProblem:
    """One reason a text is refused, with what an annotator needs to find it."""

    code: str  # NOT_NORMALIZED or MIXED_SCRIPT
    detail: str  # in words: which character or word, and where


def normalize_text(text: str) -> str:
    """`text` in normal form (see the module docstring); CRLF and CR become LF."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    # Regexes visit only the characters that can be wrong, which keeps long texts fast.
    text = _ASCII_CONTROL.sub("", text)
    return text if text.isascii() else _NON_ASCII.sub(_normal_char, text)


def _normal_char(match: re.Match[str]) -> str:
    char = match.group()
    if char in ("\u2028", "\u2029"):
        return "\n"
    return "" if unicodedata.category(char) in _DROPPED_CATEGORIES else char


def character_name(char: str) -> str:
    """'U+200B ZERO WIDTH SPACE': how a hidden character is named to a person."""
    fallback = "control character" if unicodedata.category(char) == "Cc" else "unnamed character"
    return f"U+{ord(char):04X} {unicodedata.name(char, fallback)}"


def _script(char: str) -> str | None:
    if not char.isalpha():
        return None
    name = unicodedata.name(char, "")
    return next((s for s in _CONFUSABLE_SCRIPTS if name.startswith(s + " ")), None)


def mixed_script_words(text: str) -> list[str]:
    """Words that mix letters of look-alike scripts (Latin, Cyrillic, Greek, ...), in order of appearance."""
    found: list[str] = []
    if text.isascii():
        return found
    for token in text.split():
        if token.isascii():  # most words: one script for certain
            continue
        for word in _WORD.findall(token):
            if len({s for s in map(_script, word) if s}) > 1:
                found.append(word)
    return found


def text_problems(text: str) -> list[TextProblem]:
    """Why `text` cannot enter the dataset as it is; [] when it is in normal form and has no mixed-script word.

    Line breaks written as CRLF or CR are not a problem (stored text uses LF).
    """
    problems = []
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    normal = normalize_text(text)
    if normal != text:
        offending = [f"{character_name(c)} at character {i + 1}" for i, c in enumerate(text)
                     if c not in _KEPT_WHITESPACE and normalize_text(c) != c]
        shown = offending[:5] + ([f"and {len(offending) - 5} more"] if len(offending) > 5 else [])
        problems.append(TextProblem(NOT_NORMALIZED, "hidden or non-standard characters: " + "; ".join(shown)
                                    if shown else "letters in decomposed form (a letter followed by a combining "
                                                  "mark); retype them as single letters"))
    for word in mixed_script_words(normal):
        counts = Counter(s for s in map(_script, word) if s)
        scripts, usual = sorted(counts), counts.most_common(1)[0][0]
        foreign = [f"{c!r} ({character_name(c)})" for c in word if _script(c) not in (None, usual)]
        problems.append(TextProblem(MIXED_SCRIPT, f"the word {word!r} mixes {' and '.join(s.title() for s in scripts)} "
                                                  f"letters: {', '.join(foreign[:3])}"))
    return problems
