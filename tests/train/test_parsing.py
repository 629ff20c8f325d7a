"""The answer parser on awkward model outputs, and the CoT format check."""

from __future__ import annotations

import pytest

from cotaforge.train.parsing import check_format, is_correct, parse_answer

OPTIONS = ["three", "seven", "one", "zero"]  # A, B, C, D
THINK = ("<THINK><PLANNING>Listen.</PLANNING><CAPTION>A man speaks.</CAPTION><REASONING>Option A is three, "
         "option B is seven.</REASONING><SUMMARY>He says seven.</SUMMARY></THINK>")


@pytest.mark.parametrize(
    ("output", "letter", "rule"),
    [
        # well formed
        (THINK + "<RESPONSE>The answer is B</RESPONSE>", "B", "answer_phrase"),
        # missing tags
        ("The answer is B", "B", "answer_phrase"),
        ("B", "B", "final_letter"),
        (THINK + " The answer is D", "D", "answer_phrase"),  # no RESPONSE tags: after </THINK>
        (THINK + "<RESPONSE>The answer is C", "C", "answer_phrase"),  # unclosed RESPONSE
        # lower case
        (THINK + "<RESPONSE>the answer is b</RESPONSE>", "B", "answer_phrase"),
        ("<RESPONSE>c</RESPONSE>", "C", "final_letter"),
        ("<RESPONSE>(d)</RESPONSE>", "D", "final_letter"),
        ("<RESPONSE>answer: a</RESPONSE>", "A", "answer_phrase"),
        # option text instead of a letter
        ("<RESPONSE>Seven.</RESPONSE>", "B", "option_text"),
        ("<RESPONSE>The speaker says ZERO</RESPONSE>", "D", "option_text"),
        ("<RESPONSE>A speaker says one</RESPONSE>", "C", "option_text"),  # "A speaker": the article
        # extra words after the answer
        ("<RESPONSE>B. The speaker clearly says seven.</RESPONSE>", "B", "leading_letter"),
        ("<RESPONSE>(B) because the word is seven</RESPONSE>", "B", "leading_letter"),
        ("<RESPONSE>The answer is C because the speaker says one, not three.</RESPONSE>", "C", "answer_phrase"),
        ("<RESPONSE>I would pick C here, since he says one</RESPONSE>", "C", "sole_letter"),
        # a letter given with its own option's text; the last answer phrase wins
        ("<RESPONSE>The answer is B (seven)</RESPONSE>", "B", "answer_phrase"),
        ("<RESPONSE>It is seven, not three, so the answer is B</RESPONSE>", "B", "answer_phrase"),
        ("<RESPONSE>Not A. The answer is B.</RESPONSE>", "B", "answer_phrase"),
        ("<RESPONSE>The answer is C; option A is wrong</RESPONSE>", "C", "answer_phrase"),
        # the reasoning's letters are not read when there is a response
        (THINK + "<RESPONSE>Seven, so B.</RESPONSE>", "B", "final_letter"),
    ],
)
def test_multiple_choice_answers(output: str, letter: str, rule: str) -> None:
    parsed = parse_answer(output, "multiple_choice", OPTIONS)
    assert (parsed.value, parsed.rule) == (letter, rule)


@pytest.mark.parametrize(
    ("output", "rule"),
    [
        ("<RESPONSE>A or B</RESPONSE>", "ambiguous"),  # two letters
        ("<RESPONSE>Either B or C.</RESPONSE>", "ambiguous"),
        ("<RESPONSE>seven or three</RESPONSE>", "ambiguous"),  # two option texts
        ("<RESPONSE>The answer is E</RESPONSE>", "no_answer"),  # not an option letter
        # a letter with another option's text contradicts itself, whichever rule reads the letter
        ("<RESPONSE>The answer is A (seven)</RESPONSE>", "conflict"),
        ('<RESPONSE>The sound is "seven", so the answer is C</RESPONSE>', "conflict"),
        ("<RESPONSE>Seven, so D.</RESPONSE>", "conflict"),
        ("<RESPONSE>C. The speaker says zero</RESPONSE>", "conflict"),
        ("<RESPONSE>I would pick D here, since he says one</RESPONSE>", "conflict"),
        ("<RESPONSE></RESPONSE>", "no_answer"),
        ("<RESPONSE>I cannot tell.</RESPONSE>", "no_answer"),
        ("<THINK><PLANNING>Listen.</PLANNING><CAPTION>The answer is B", "no_answer"),  # truncated in THINK
        ("", "no_answer"),
    ],
)
def test_multiple_choice_without_a_single_answer(output: str, rule: str) -> None:
    parsed = parse_answer(output, "multiple_choice", OPTIONS)
    assert (parsed.value, parsed.rule) == (None, rule)


def test_overlapping_option_texts_name_the_longest_option() -> None:
    options = ["dog", "hot dog", "cat"]
    assert parse_answer("<RESPONSE>It is a hot dog.</RESPONSE>", "multiple_choice", options).value == "B"
    assert parse_answer("<RESPONSE>A hot dog, so B</RESPONSE>", "multiple_choice", options).value == "B"
    assert parse_answer("<RESPONSE>A hot dog, so A</RESPONSE>", "multiple_choice", options).rule == "conflict"
    assert parse_answer("<RESPONSE>A dog, not a hot dog</RESPONSE>", "multiple_choice", options).rule == "ambiguous"


def test_where_the_answer_is_read_from() -> None:
    assert parse_answer(THINK + "<RESPONSE>B</RESPONSE>", "multiple_choice", OPTIONS).source == "response"
    assert parse_answer(THINK + "B", "multiple_choice", OPTIONS).source == "after_think"
    assert parse_answer("B", "multiple_choice", OPTIONS).source == "whole_output"


@pytest.mark.parametrize(
    ("output", "value"),
    [
        ("<RESPONSE>Yes</RESPONSE>", "yes"),
        ("<RESPONSE>no.</RESPONSE>", "no"),
        ("<RESPONSE>NO, the speaker says three</RESPONSE>", "no"),
        ("<RESPONSE>I know it: yes, he says seven. No doubt.</RESPONSE>", "yes"),  # the first yes/no word
        ("Yes", "yes"),
        ("<RESPONSE>Nope</RESPONSE>", None),
    ],
)
def test_yes_no_answers(output: str, value: str | None) -> None:
    assert parse_answer(output, "yes_no").value == value


def test_correctness_by_question_type() -> None:
    def scored(output: str, question_type: str, answer: str) -> bool:
        return is_correct(parse_answer(output, question_type, OPTIONS).value, question_type, answer)

    assert scored("<RESPONSE>b</RESPONSE>", "multiple_choice", "B")
    assert not scored("<RESPONSE>A or B</RESPONSE>", "multiple_choice", "B")
    assert not scored("<RESPONSE>It is three, so the answer is B</RESPONSE>", "multiple_choice", "B")
    assert scored("<RESPONSE>Yes.</RESPONSE>", "yes_no", "yes")
    assert scored("<RESPONSE>The digit is Seven!</RESPONSE>", "open_ended", "seven")
    assert not scored("<RESPONSE>seventeen</RESPONSE>", "open_ended", "seven")


def test_parsing_multiple_choice_needs_options() -> None:
    with pytest.raises(ValueError, match="options"):
        parse_answer("<RESPONSE>B</RESPONSE>", "multiple_choice", [])


def test_format_compliance() -> None:
    assert check_format(THINK + "<RESPONSE>B</RESPONSE>").compliant
    missing = check_format("<THINK><PLANNING>p</PLANNING></THINK><RESPONSE>B</RESPONSE>")
    assert not missing.compliant and "missing_stage" in missing.problems
    swapped = THINK.replace("<CAPTION>A man speaks.</CAPTION>", "").replace(
        "<SUMMARY>", "<CAPTION>x</CAPTION><SUMMARY>") + "<RESPONSE>B</RESPONSE>"
    assert check_format(swapped).problems == ["stage_order"]
    assert check_format(THINK + "<RESPONSE> </RESPONSE>").problems == ["empty_response"]
    assert "repeated_stage" in check_format(THINK + THINK + "<RESPONSE>B</RESPONSE>").problems
