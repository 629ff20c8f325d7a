"""cot_template.v3: yes/no and multiple-choice chains a small model can follow, and they still validate."""

from __future__ import annotations

import pytest

from cotaforge.cot import render_user_text
from cotaforge.teacher.base import CotRequest
from cotaforge.teacher.template import TemplateTeacher

from ..conftest import make_config, read_stage, run_stages

FACTS = {"duration_s": 1.3, "loudness_dbfs": -15.0, "peak_dbfs": -11.0, "clipping_ratio": 0.0,
         "silence_ratio": 0.0, "spectral_centroid_hz": 200.0, "onset_count": 1, "tempo_bpm": None,
         "f0_median_hz": 190.0, "voiced_ratio": 0.9}
OPTIONS = ["click train", "white noise", "low tone", "high tone"]


def _write(question_type: str, answer: str, asked_value: str = "", options: list[str] | None = None,
           sample_id: str = "s1"):
    request = CotRequest(sample_id=sample_id, question_type=question_type, target="class", question="Which sound?",
                         options=options or [], answer=answer, answer_text='"low tone"',
                         caption='A recording that contains "low tone".', facts=FACTS, asked_value=asked_value)
    return TemplateTeacher("cot_template.v3").write_cots([request])[0]


@pytest.mark.parametrize(("asked", "answer", "verdict"), [
    ("low tone", "yes", 'they are the same, so the answer is yes.'),
    ("white noise", "no", 'they differ, so the answer is no.'),
])
def test_yes_no_reasoning_ends_with_the_heard_and_asked_sounds_side_by_side(asked, answer, verdict):
    for sample_id in ("s1", "s2", "s3", "s4"):  # every draw of the other sentences
        cot = _write("yes_no", answer, asked_value=asked, sample_id=sample_id)
        assert cot.planning.startswith(f'The question asks about "{asked}".')
        assert cot.reasoning.endswith(f'I hear "low tone" and the question asks about "{asked}": {verdict}')
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


def test_v3_samples_pass_every_validation_check(tmp_path, digits_manifest):
    cfg = make_config(tmp_path / "out", [digits_manifest], "expand.cot_bank=cot_template.v3")
    run, reports = run_stages(cfg, until="validate")
    samples = read_stage(run, "expand")
    assert samples and all(s["teacher"]["prompt_versions"] == ["cot_template.v3"] for s in samples)
    assert {"multiple_choice", "yes_no"} <= {s["question_type"] for s in samples}
    assert reports["validate"].rejected == {} and reports["validate"].rows_out == len(samples)
