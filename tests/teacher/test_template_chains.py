"""cot_template.v3, v4 and v6: yes/no and multiple-choice chains a small model can follow, and they still validate."""

from __future__ import annotations

import pytest

from cotaforge.cot import render_assistant_text, render_user_text
from cotaforge.teacher.base import CotRequest
from cotaforge.teacher.template import TemplateTeacher
from cotaforge.train.config import TinyModelSection
from cotaforge.train.tiny import build_tiny_processor

from ..conftest import make_config, read_stage, run_stages

FACTS = {"duration_s": 1.3, "loudness_dbfs": -15.0, "peak_dbfs": -11.0, "clipping_ratio": 0.0,
         "silence_ratio": 0.0, "spectral_centroid_hz": 200.0, "onset_count": 1, "tempo_bpm": None,
         "f0_median_hz": 190.0, "voiced_ratio": 0.9}
OPTIONS = ["click train", "white noise", "low tone", "high tone"]


def _write(question_type: str, answer: str, asked_value: str = "", options: list[str] | None = None,
           sample_id: str = "s1", bank: str = "cot_template.v3"):
    request = CotRequest(sample_id=sample_id, question_type=question_type, target="class", question="Which sound?",
                         options=options or [], answer=answer, answer_text='"low tone"',
                         caption='A recording that contains "low tone".', facts=FACTS, asked_value=asked_value)
    return TemplateTeacher(bank).write_cots([request])[0]


@pytest.mark.parametrize(("bank", "quote"), [("cot_template.v3", '"'), ("cot_template.v4", "")])
@pytest.mark.parametrize(("asked", "answer", "verdict"), [
    ("low tone", "yes", 'they are the same, so the answer is yes.'),
    ("white noise", "no", 'they differ, so the answer is no.'),
])
def test_yes_no_reasoning_ends_with_the_heard_and_asked_sounds_side_by_side(asked, answer, verdict, bank, quote):
    for sample_id in ("s1", "s2", "s3", "s4"):  # every draw of the other sentences
        cot = _write("yes_no", answer, asked_value=asked, sample_id=sample_id, bank=bank)
        assert cot.planning.startswith(f'The question asks about "{asked}".')
        assert cot.reasoning.endswith(f"I hear {quote}low tone{quote} and the question asks about "
                                      f"{quote}{asked}{quote}: {verdict}")
        assert cot.summary.split(":")[0].lower() == answer
        assert cot.response.split(".")[0].lower() == answer


def test_multiple_choice_planning_checks_the_options_as_the_user_turn_lists_them_down_to_the_answer():
    cot = _write("multiple_choice", "C", options=OPTIONS)
    user_lines = render_user_text("Which sound?", OPTIONS).split("\n")[1:]
    plan_lines = cot.planning.split("\n")
    assert plan_lines[0].startswith("I hear low tone.")
    # One line per option up to the answer, each the user turn's own line plus its verdict.
    assert plan_lines[1:4] == [f"{user_lines[0]}: no", f"{user_lines[1]}: no", f"{user_lines[2]}: yes"]
    assert plan_lines[4] == "So the answer is (C)."
    assert cot.reasoning.endswith("So the answer is (C).")
    assert cot.response.endswith("so the answer is (C)")


def test_multiple_choice_check_list_stops_at_a_first_option_answer():
    cot = _write("multiple_choice", "A", options=["low tone", "high tone"])
    assert cot.planning.split("\n")[1:3] == ["A. low tone: yes", "So the answer is (A)."]


def test_v4_copies_each_option_then_quotes_it_so_only_the_heard_one_repeats_tokens_already_written():
    cot = _write("multiple_choice", "C", options=OPTIONS, bank="cot_template.v4")
    user_lines = render_user_text("Which sound?", OPTIONS).split("\n")[1:]
    assert cot.planning.split("\n") == [
        'I hear "low tone". The question offers 4 options; I check them in turn:',
        f'{user_lines[0]} ("click train"): no', f'{user_lines[1]} ("white noise"): no',
        f'{user_lines[2]} ("low tone"): yes', "So the answer is (C)."]
    assert cot.response.endswith("so the answer is (C)")
    # What the quotes are for, with the tiny model's own tokenizer: a quoted option's first word is a token
    # the user turn never shows, and among the check lines only the answer's repeats the heard sound's tokens.
    tokenizer = build_tiny_processor([render_user_text("Which sound?", OPTIONS), cot.planning] * 20,
                                     TinyModelSection()).tokenizer
    user_ids = set(tokenizer(render_user_text("Which sound?", OPTIONS))["input_ids"])
    heard_line, *check_lines = cot.planning.split("\n")[:4]
    heard_ids = set(tokenizer(heard_line)["input_ids"])
    for line, option in zip(check_lines, OPTIONS):
        ids = tokenizer(line)["input_ids"]
        assert tokenizer.decode(ids[:4]) == f"{line[0]}. {option}"  # the user turn's line, token for token
        quoted_word = ids[ids.index(tokenizer.convert_tokens_to_ids("Ġ(\"")) + 1]
        assert tokenizer.decode([quoted_word]) == option.split()[0]
        assert quoted_word not in user_ids
        assert (quoted_word in heard_ids) == (option == "low tone")


def test_the_tiny_tokenizer_keeps_each_option_line_start_as_one_token_the_check_lines_repeat():
    # So the model copies an option by matching the token just before it.
    cot = _write("multiple_choice", "C", options=OPTIONS, bank="cot_template.v4")
    stages = {"planning": cot.planning, "caption": cot.caption, "reasoning": cot.reasoning,
              "summary": cot.summary, "response": cot.response}
    user, assistant = render_user_text("Which sound?", OPTIONS), render_assistant_text(stages)
    tokenizer = build_tiny_processor([user, assistant] * 20, TinyModelSection()).tokenizer
    user_ids, assistant_ids = tokenizer(user)["input_ids"], tokenizer(assistant)["input_ids"]
    for letter, option in zip("ABCD", OPTIONS):
        marker = tokenizer.convert_tokens_to_ids(f"\n{letter}.")
        assert marker != tokenizer.unk_token_id and user_ids.count(marker) == 1
        # The token after the marker is the option's first word, in the question and in its check line.
        after = user_ids[user_ids.index(marker) + 1]
        assert tokenizer.decode([after]) == " " + option.split()[0]
    # v4 checks options up to the answer (C): A, B and C each start a check line with the user turn's marker.
    for letter in "ABC":
        marker = tokenizer.convert_tokens_to_ids(f"\n{letter}.")
        assert assistant_ids.count(marker) == 1
        assert assistant_ids[assistant_ids.index(marker) + 1] == user_ids[user_ids.index(marker) + 1]
    # The markers change how text splits, never what it decodes to.
    assert tokenizer.decode(user_ids) == user and tokenizer.decode(assistant_ids) == assistant


@pytest.mark.parametrize("asked", ["low tone", "white noise"])
def test_v4_yes_no_names_the_asked_sound_in_tokens_the_question_does_not_use(asked):
    question = f'Is this "{asked}"?'
    cot = _write("yes_no", "yes" if asked == "low tone" else "no", asked_value=asked, bank="cot_template.v4")
    last = cot.reasoning[cot.reasoning.rindex("I hear"):]
    tokenizer = build_tiny_processor([question, cot.planning, cot.caption, cot.reasoning] * 20,
                                     TinyModelSection()).tokenizer
    ids = tokenizer(last)["input_ids"]
    at = ids.index(tokenizer.convert_tokens_to_ids("Ġabout")) + 1
    asked_id = ids[at]
    assert tokenizer.decode([asked_id]) == " " + asked.split()[0]
    seen_before = set(tokenizer(question)["input_ids"]) | set(tokenizer(cot.planning)["input_ids"]) | set(
        tokenizer(cot.caption)["input_ids"])
    assert asked_id not in seen_before  # the question, PLANNING and CAPTION quote it
    assert (asked_id in ids[:at]) == (asked == "low tone")  # only `I hear low tone` repeats it


def test_v6_checks_each_option_beside_the_heard_sound_down_to_the_answer():
    cot = _write("multiple_choice", "C", options=OPTIONS, bank="cot_template.v6")
    user_lines = render_user_text("Which sound?", OPTIONS).split("\n")[1:]
    assert cot.planning.split("\n") == [
        "I hear low tone. The question offers 4 options; I check them in turn:",
        f"{user_lines[0]}, and I hear low tone: they differ.", f"{user_lines[1]}, and I hear low tone: they differ.",
        f"{user_lines[2]}, and I hear low tone: they are the same.", "So the answer is (C)."]
    assert cot.reasoning.endswith("So the answer is (C).") and cot.response.endswith("so the answer is (C)")
    first = _write("multiple_choice", "A", options=["low tone", "high tone"], bank="cot_template.v6")
    assert first.planning.split("\n")[1:] == ["A. low tone, and I hear low tone: they are the same.",
                                               "So the answer is (A)."]


@pytest.mark.parametrize(("asked", "answer", "verdict"), [
    ("low tone", "yes", "they are the same, so the answer is yes."),
    ("white noise", "no", "they differ, so the answer is no."),
])
def test_v6_yes_no_reasoning_ends_like_a_check_line(asked, answer, verdict):
    for sample_id in ("s1", "s2", "s3", "s4"):
        cot = _write("yes_no", answer, asked_value=asked, sample_id=sample_id, bank="cot_template.v6")
        assert cot.reasoning.endswith(f"The question asks about {asked}, and I hear low tone: {verdict}")
        assert cot.response.split(".")[0].lower() == answer


def test_v6_every_verdict_follows_the_same_tokens_compared_in_the_same_places():
    # One comparison for both question types: with the tiny model's tokenizer, each verdict is preceded by
    # `<compared sound> , and I hear <heard sound> : they`, the compared sound being the option or the asked one.
    mc = _write("multiple_choice", "C", options=OPTIONS, bank="cot_template.v6")
    yes_no = [_write("yes_no", "yes" if asked == "low tone" else "no", asked_value=asked, bank="cot_template.v6")
              for asked in ("low tone", "white noise")]
    texts = [mc.planning] + [cot.reasoning for cot in yes_no]
    tokenizer = build_tiny_processor([render_user_text("Which sound?", OPTIONS)] + texts * 20,
                                     TinyModelSection()).tokenizer
    they = tokenizer.convert_tokens_to_ids("Ġthey")
    tail = tokenizer(", and I hear low tone:", add_special_tokens=False)["input_ids"]
    compared = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for at in [i for i, token in enumerate(ids) if token == they]:
            assert ids[at - len(tail):at] == tail
            compared.append(tokenizer.decode(ids[at - len(tail) - 2:at - len(tail)]).strip())
    assert compared == ["click train", "white noise", "low tone", "low tone", "white noise"]


@pytest.mark.parametrize("bank", ["cot_template.v3", "cot_template.v4", "cot_template.v6"])
def test_samples_pass_every_validation_check(tmp_path, digits_manifest, bank):
    cfg = make_config(tmp_path / "out", [digits_manifest], f"expand.cot_bank={bank}")
    run, reports = run_stages(cfg, until="validate")
    samples = read_stage(run, "expand")
    assert samples and all(s["teacher"]["prompt_versions"] == [bank] for s in samples)
    assert {"multiple_choice", "yes_no"} <= {s["question_type"] for s in samples}
    assert reports["validate"].rejected == {} and reports["validate"].rows_out == len(samples)
