"""The tiny model's tokenizer: an option line's start is one token, so the model copies an option by one match."""

from __future__ import annotations

from cotaforge.cot import render_assistant_text, render_user_text
from cotaforge.teacher.base import CotRequest
from cotaforge.teacher.template import TemplateTeacher
from cotaforge.train.config import TinyModelSection
from cotaforge.train.tiny import build_tiny_processor

OPTIONS = ["click train", "white noise", "low tone", "high tone"]
FACTS = {"duration_s": 1.3, "loudness_dbfs": -15.0, "peak_dbfs": -11.0, "clipping_ratio": 0.0,
         "silence_ratio": 0.0, "spectral_centroid_hz": 200.0, "onset_count": 1, "tempo_bpm": None,
         "f0_median_hz": 190.0, "voiced_ratio": 0.9}


def _multiple_choice_sample() -> tuple[str, str]:
    request = CotRequest(sample_id="s1", question_type="multiple_choice", target="class", question="Which sound?",
                         options=OPTIONS, answer="C", answer_text='"low tone"',
                         caption='A recording that contains "low tone".', facts=FACTS)
    cot = TemplateTeacher("cot_template.v4").write_cots([request])[0]
    stages = {"planning": cot.planning, "caption": cot.caption, "reasoning": cot.reasoning,
              "summary": cot.summary, "response": cot.response}
    return render_user_text("Which sound?", OPTIONS), render_assistant_text(stages)


def test_each_option_line_starts_with_one_token_the_check_lines_repeat():
    user, assistant = _multiple_choice_sample()
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
