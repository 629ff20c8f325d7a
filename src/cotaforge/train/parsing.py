"""Reading the final answer out of a model's output, and checking the output's CoT format.

The rules, in order (README "Answer-parsing rules" says the same):

1. Where the answer is read from: the `<RESPONSE>` block (up to `</RESPONSE>` or the end); without one,
   the text after the last `</THINK>`; without that, the output with every stage block removed (an
   unclosed stage runs to the end, so a truncated answer leaves nothing to read).
2. Multiple choice, first rule that matches wins (letters are option letters only, A-D for four options):
   a. `answer_phrase`: the last "answer (is|:) X" (so "A is wrong; the answer is B" is B); without one, the
      last "option/choice (is|:) X";
   b. `ambiguous`: two or more distinct capital letters stand alone ("A or B"): no answer;
   c. `final_letter`: the text ends with a letter ("... so it is C.", "(c)");
   d. `leading_letter`: the text starts with a letter and a mark ("B. seven", "b)", "(B)");
   e. `sole_letter`: one capital letter stands alone somewhere ("I pick B here");
   f. `option_text`: exactly one option's text appears as whole words ("It is seven."); several is
      `ambiguous`.
   Lower-case letters count ("the answer is b"), except "a" and "i" followed by another word, which are
   words. A capital "A" followed by a lower-case word is the article ("A speaker says...").
   `conflict`: a letter read by a-e whose option's text is not among the option texts the text names
   ("It is seven, so the answer is A" where A is three) is no answer: the output contradicts itself, and
   either half alone would be right by chance one time in the number of options. Where option texts
   overlap ("dog", "hot dog"), a mention counts for the longest option it spells.
3. Yes/no: the first "yes" or "no" as a whole word, any case.
4. Open-ended and comparison: the text, lower-cased, without punctuation; it is correct when the reference
   answer appears in it as whole words.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field

from cotaforge.cot import parse_assistant_text
from cotaforge.models import COT_STAGES
from cotaforge.train.data import LETTERS

THINK_STAGES = tuple(stage for stage in COT_STAGES if stage != "response")
_TAG = re.compile(r"</?(?:THINK|" + "|".join(stage.upper() for stage in COT_STAGES) + r")>", re.IGNORECASE)
_RESPONSE = re.compile(r"<RESPONSE>(.*?)(?:</RESPONSE>|$)", re.IGNORECASE | re.DOTALL)
_STAGE_BLOCK = re.compile(r"<(" + "|".join(stage.upper() for stage in THINK_STAGES) + r")>.*?(?:</\1>|$)",
                          re.IGNORECASE | re.DOTALL)
# A letter counts when nothing word-like touches it; `_letter_ok` then rules out articles and words.
_ANSWER_PHRASE = re.compile(r"\banswer\b\s*(?:is\s*)?(?:[:=\-]\s*)?(?:option\s*)?"
                            r"[(\[]?([A-Za-z])[)\]]?(?![A-Za-z0-9'])", re.IGNORECASE)
_OPTION_PHRASE = re.compile(r"\b(?:option|choice)\b\s*(?:is\s*)?(?:[:=\-]\s*)?[(\[]?([A-Za-z])[)\]]?(?![A-Za-z0-9'])",
                            re.IGNORECASE)
_FINAL_LETTER = re.compile(r"(?:^|[\s:(\[])[(\[]?([A-Za-z])[)\]]?[.!]?\s*$")
_LEADING_LETTER = re.compile(r"^\s*[(\[]?([A-Za-z])(?:[)\]]|[.:,]|\s*$)")
_STANDALONE_CAPITAL = re.compile(r"(?<![A-Za-z0-9'])\(?([A-Z])\)?(?![A-Za-z0-9'])")
_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedAnswer:
    """What was read: `value` (letter, yes/no or normalised text; None if nothing), the rule and the source."""

    value: str | None
    rule: str
    source: str


@dataclass(frozen=True)
class FormatCheck:
    compliant: bool
    problems: list[str] = field(default_factory=list)


def answer_text(output: str) -> tuple[str, str]:
    """The part of a model output that holds the final answer, and where it came from (rule 1)."""
    match = _RESPONSE.search(output)
    if match:
        return match.group(1).strip(), "response"
    closing = output.upper().rfind("</THINK>")
    if closing >= 0:
        return output[closing + len("</THINK>"):].strip(), "after_think"
    return _TAG.sub(" ", _STAGE_BLOCK.sub(" ", output)).strip(), "whole_output"


def normalize_text(text: str) -> str:
    """Lower case, punctuation to spaces, single spaces: how open answers are compared."""
    table = str.maketrans({char: " " for char in string.punctuation})
    return " ".join(text.lower().translate(table).split())


def _contains_words(text: str, words: str) -> bool:
    needle = normalize_text(words)
    return bool(needle) and f" {needle} " in f" {normalize_text(text)} "


def is_letter_mention(letter: str, after: str, letters: str) -> bool:
    """Whether a standalone `letter` followed by the text `after` names an option (not "a", "I" or "A man")."""
    if letter.upper() not in letters:
        return False
    if letter in "ai":
        # Lower-case "a" and "i" are words; as letters they must be followed by an end, bracket or punctuation.
        return re.match(r"\s*(?:$|[).,;:!?\]])", after) is not None
    # "A speaker..." is the article; "A." / "A)" / "A" at the end / "A or B" are letters.
    return not (letter == "A" and re.match(r"\s+[a-z]", after) and not re.match(r"\s+(?:or|and)\b", after))


def _letter_ok(text: str, match: re.Match[str], letters: str) -> bool:
    return is_letter_mention(match.group(1), text[match.end(1):], letters)


def named_options(text: str, options: Sequence[str]) -> list[str]:
    """Letters of the options whose text appears in `text` as whole words, in option order.

    Longer option texts are matched first and their mentions removed, so "hot dog" does not also name "dog".
    """
    remaining = f" {normalize_text(text)} "
    named: set[int] = set()
    for index in sorted(range(len(options)), key=lambda i: len(normalize_text(options[i])), reverse=True):
        needle = normalize_text(options[index])
        if needle and f" {needle} " in remaining:
            named.add(index)
            remaining = remaining.replace(f" {needle} ", " | ")
    return [LETTERS[index] for index in sorted(named)]


def _parse_choice(text: str, options: Sequence[str], source: str) -> ParsedAnswer:
    letters = LETTERS[: len(options)]
    named = named_options(text, options)

    def letter(value: str, rule: str) -> ParsedAnswer:
        if named and value not in named:  # the letter and the option text it is given with disagree
            return ParsedAnswer(None, "conflict", source)
        return ParsedAnswer(value, rule, source)

    for pattern in (_ANSWER_PHRASE, _OPTION_PHRASE):
        phrases = [m for m in pattern.finditer(text) if _letter_ok(text, m, letters)]
        if phrases:
            return letter(phrases[-1].group(1).upper(), "answer_phrase")
    capitals = {m.group(1) for m in _STANDALONE_CAPITAL.finditer(text) if _letter_ok(text, m, letters)}
    if len(capitals) > 1:
        return ParsedAnswer(None, "ambiguous", source)
    for rule, pattern in (("final_letter", _FINAL_LETTER), ("leading_letter", _LEADING_LETTER)):
        match = pattern.search(text)
        if match and _letter_ok(text, match, letters):
            return letter(match.group(1).upper(), rule)
    if capitals:
        return letter(capitals.pop(), "sole_letter")
    if len(named) == 1:
        return ParsedAnswer(named[0], "option_text", source)
    return ParsedAnswer(None, "ambiguous" if named else "no_answer", source)


def parse_answer(output: str, question_type: str, options: Sequence[str] = ()) -> ParsedAnswer:
    """The final answer in `output` for a question of `question_type` (see the module docstring)."""
    text, source = answer_text(output)
    if not text:
        return ParsedAnswer(None, "no_answer", source)
    if question_type == "multiple_choice":
        if not options:
            raise ValueError("a multiple_choice question needs its options to parse an answer")
        return _parse_choice(text, options, source)
    if question_type == "yes_no":
        match = _YES_NO.search(text)
        return ParsedAnswer(match.group(1).lower(), "yes_no", source) if match else ParsedAnswer(None, "no_answer",
                                                                                                  source)
    return ParsedAnswer(normalize_text(text) or None, "text", source)


def is_correct(value: str | None, question_type: str, answer: str) -> bool:
    """Whether a parsed answer `value` matches the reference `answer` (a letter for multiple choice)."""
    if value is None:
        return False
    if question_type == "multiple_choice":
        return value == answer.strip().upper()
    if question_type == "yes_no":
        return value == answer.strip().lower()
    return _contains_words(value, answer)


def check_format(output: str) -> FormatCheck:
    """Every CoT stage present once, in order (the validate stage's rules), and none of them empty."""
    stages, problems = parse_assistant_text(output)
    problems = problems + [f"empty_{stage}" for stage, body in stages.items() if not body]
    return FormatCheck(not problems, problems)
