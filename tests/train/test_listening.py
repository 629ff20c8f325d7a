"""The listening measure: partner clips, swapped-audio scoring and option scoring, with stand-in models.

A stand-in model that hears (it reads the tone's pitch) and one that does not (it answers from the question
text) go through the same evaluation code the real model does; the measure must tell them apart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pytest

from cotaforge.train.evaluate import (
    EvalItem,
    _group_rows,
    answer_value_spans,
    evaluate_items,
    option_candidates,
    pair_items,
    swap_yes_no,
)

CLASSES = {"low tone": 220.0, "mid tone": 660.0, "high tone": 1980.0, "top tone": 3960.0}
SAMPLE_RATE_HZ = 16_000


def _tone(frequency_hz: float, take: int) -> np.ndarray:
    t = np.arange(8000) / SAMPLE_RATE_HZ
    return (0.3 * np.sin(2 * np.pi * frequency_hz * (1 + 0.01 * take) * t)).astype(np.float32)


def _reference(stage_text: str, response: str) -> str:
    # Like a published answer, the reference states the clip's facts; no scoring may lean on them.
    return (f"<THINK><PLANNING>Plan.</PLANNING><CAPTION>A clip that contains {stage_text}, pitch measured exactly."
            f"</CAPTION><REASONING>So.</REASONING><SUMMARY>Done.</SUMMARY></THINK><RESPONSE>{response}</RESPONSE>")


def make_items(takes: int = 3, split: str = "test") -> list[EvalItem]:
    """Each clip asked three ways; the correct option letter and the yes/no answer rotate across clips."""
    names = list(CLASSES)
    items = []
    for class_index, name in enumerate(names):
        for take in range(takes):
            samples = _tone(CLASSES[name], take)
            clip = f"{name}-{take}"
            rotate = (class_index + take) % 4
            options = names[rotate:] + names[:rotate]
            letter = "ABCD"[options.index(name)]
            items.append(EvalItem(f"{clip}-mc", samples, "Which sound is it?", options, "multiple_choice", letter,
                                  name, split, reference=_reference(name, f"It is {name}. Answer: {letter}"),
                                  clip_id=clip))
            asked = name if take % 2 == 0 else names[(class_index + 1) % 4]
            answer = "yes" if asked == name else "no"
            items.append(EvalItem(f"{clip}-yn", samples, f"Is it {asked}?", [], "yes_no", answer, name, split,
                                  reference=_reference(name, f"{answer.capitalize()}, it is {name}."),
                                  asked_value=asked, clip_id=clip))
            items.append(EvalItem(f"{clip}-open", samples, "What is it?", [], "open_ended", name, name, split,
                                  reference=_reference(name, f"It is {name}."), clip_id=clip))
    return items


def heard_class(samples: np.ndarray) -> str:
    """The class whose pitch is nearest the clip's strongest frequency."""
    peak_hz = np.argmax(np.abs(np.fft.rfft(samples))) * SAMPLE_RATE_HZ / len(samples)
    return min(CLASSES, key=lambda name: abs(np.log(CLASSES[name] / peak_hz)))


class StandInModel:
    """Writes a short CoT naming what it 'hears' and answers from it; scores texts that agree with it higher.

    With `listens=False` what it 'hears' is drawn from the question's text, so the audio changes nothing.
    """

    def __init__(self, listens: bool) -> None:
        self.listens = listens
        self.scored: list[str] = []

    def _heard(self, item: EvalItem) -> str:
        if self.listens:
            return heard_class(item.samples)
        return list(CLASSES)[int(hashlib.sha256(item.item_id.encode()).hexdigest(), 16) % len(CLASSES)]

    def _answer(self, item: EvalItem, heard: str) -> str:
        if item.question_type == "multiple_choice":
            return f"Answer: {'ABCD'[item.options.index(heard)]}"
        if item.question_type == "yes_no":
            return "Yes." if item.asked_value == heard else "No."
        return f"It is {heard}."

    def generate(self, items: Sequence[EvalItem]) -> list[str]:
        outputs = []
        for item in items:
            heard = self._heard(item)
            outputs.append(f"<THINK><PLANNING>Listen.</PLANNING><CAPTION>It sounds like {heard}.</CAPTION>"
                           f"<REASONING>It is {heard}.</REASONING><SUMMARY>{heard}.</SUMMARY></THINK>"
                           f"<RESPONSE>{self._answer(item, heard)}</RESPONSE>")
        return outputs

    def answer_log_likelihoods(self, item: EvalItem, answers: Sequence[str]) -> list[float]:
        self.scored.extend(answers)
        heard = self._heard(item)
        if item.question_type == "yes_no":  # likely when the response agrees with what it heard
            agrees = [answer.endswith(self._answer(item, heard) + "</RESPONSE>") for answer in answers]
            return [float(agree) - 0.01 * index for index, agree in enumerate(agrees)]
        return [float(f"sounds like {heard}" in answer) - 0.01 * index for index, answer in enumerate(answers)]

    def answer_value_loss(self, item: EvalItem, continuation: str, spans: Sequence[tuple[int, int]]) -> float:
        # Low when the reasoning the continuation holds names the class the answer value stands for.
        valued = " ".join(continuation[start:end] for start, end in spans).lower()
        named = continuation.split("sounds like ")[1].split(".")[0] if "sounds like " in continuation else ""
        agrees = named and (named in valued or item.class_label == named)
        return 0.1 if agrees else 3.0


@pytest.mark.parametrize("scoring", ["generate", "options"])
def test_a_model_that_ignores_the_audio_has_no_listening_gap(scoring: str) -> None:
    results = evaluate_items(StandInModel(listens=False), make_items(), scoring, batch_size=5)
    rows = {(row.group, row.value): row for row in _group_rows(results)}
    for question_type in ("multiple_choice", "yes_no", "open_ended"):
        row = rows[("split/type", f"test/{question_type}")]
        assert row.n_swapped == row.n == 12
        assert row.listening_gap == 0.0 and row.accuracy_swapped_audio == row.accuracy
        assert row.answer_loss == row.answer_loss_swapped_audio


@pytest.mark.parametrize("scoring", ["generate", "options"])
def test_a_model_that_listens_loses_its_answers_under_a_partner_clip(scoring: str) -> None:
    results = evaluate_items(StandInModel(listens=True), make_items(), scoring, batch_size=5)
    rows = {(row.group, row.value): row for row in _group_rows(results)}
    for question_type in ("multiple_choice", "yes_no", "open_ended"):
        row = rows[("split/type", f"test/{question_type}")]
        assert row.accuracy == 1.0, question_type
        # Every partner clip answers the question differently, so a listener is wrong on all of them.
        assert row.accuracy_swapped_audio == 0.0 and row.listening_gap == 1.0, question_type
        assert row.answer_loss == pytest.approx(0.1) and row.answer_loss_swapped_audio == pytest.approx(3.0)


def test_option_scoring_scores_the_models_own_answer_never_the_reference() -> None:
    model = StandInModel(listens=True)
    items = make_items(takes=1)
    evaluate_items(model, items, "options", batch_size=4)
    assert model.scored
    references = {item.reference for item in items}
    assert not any("measured exactly" in text or text in references for text in model.scored)
    # A multiple-choice answer is rewritten once per option: letter and option text change together.
    item = next(i for i in items if i.question_type == "multiple_choice")
    output = model.generate([item])[0]
    candidates = option_candidates(item, output)
    assert len(candidates) == 4 and candidates["ABCD".index(item.answer)] == output
    for letter, option, text in zip("ABCD", item.options, candidates):
        assert f"sounds like {option}." in text and text.endswith(f"Answer: {letter}</RESPONSE>")


def test_option_candidates_without_a_parsed_answer_append_a_response_per_option() -> None:
    item = make_items(takes=1)[0]
    candidates = option_candidates(item, "<THINK><CAPTION>unclear</CAPTION></THINK><RESPONSE>hmm</RESPONSE>")
    assert candidates == [f"<THINK><CAPTION>unclear</CAPTION></THINK>\n<RESPONSE>\nThe answer is {letter}\n"
                          "</RESPONSE>" for letter in "ABCD"]
    yes_no = make_items(takes=1)[1]
    assert [c.endswith(end) for c, end in zip(option_candidates(yes_no, "unclear"),
                                               ("Yes.\n</RESPONSE>", "No.\n</RESPONSE>"))] == [True, True]


def test_yes_and_no_are_exchanged_after_planning_only() -> None:
    text = "<PLANNING>Say yes or no.</PLANNING><REASONING>So no.</REASONING><RESPONSE>No, it is not. YES</RESPONSE>"
    assert swap_yes_no(text) == ("<PLANNING>Say yes or no.</PLANNING><REASONING>So yes.</REASONING><RESPONSE>Yes, "
                                 "it is not. NO</RESPONSE>")


def test_partners_are_clips_of_another_answer_from_the_same_split_and_source() -> None:
    items = make_items() + make_items(split="validation")
    items.append(EvalItem("other-source", _tone(220.0, 9), "What is it?", [], "open_ended", "low tone", "low tone",
                          "test", source="elsewhere", clip_id="elsewhere-0"))
    partners = pair_items(items, seed=0)
    for item, index in zip(items, partners):
        if item.source == "elsewhere":
            assert index is None  # nothing else from that source: no partner rather than a wrong one
            continue
        assert index is not None
        partner = items[index]
        assert (partner.split, partner.source, partner.target) == (item.split, item.source, item.target)
        assert partner.clip_id != item.clip_id and partner.target_value != item.target_value
        if item.question_type == "yes_no" and item.answer == "no":
            assert partner.target_value == item.asked_value  # the only clips that make the answer yes
        if item.question_type == "multiple_choice":
            assert partner.target_value in item.options
    assert pair_items(items, seed=0) == partners
    assert pair_items(items, seed=1) != partners
    # The pairing of an item does not depend on which other questions are evaluated beside it.
    tests_only = [item for item in items if item.split == "test" and item.source == "-"]
    again = pair_items(tests_only, seed=0)
    assert [tests_only[i].clip_id for i in again] == [items[partners[items.index(item)]].clip_id
                                                      for item in tests_only]


def test_unknown_question_types_are_scored_as_text_and_still_paired() -> None:
    items = [EvalItem(f"q{i}", _tone(freq, 0), "How many events?", [], "scene_count", str(i + 1), "scene", "test",
                      target="scene.count", target_value=str(i + 1), clip_id=f"c{i}")
             for i, freq in enumerate([220.0, 660.0])]
    results = evaluate_items(StandInModel(listens=True), items, "options")
    assert [r.swapped_clip for r in results] == ["c1", "c0"] and all(r.rule == "text" for r in results)


def test_scene_questions_pair_only_with_clips_asked_the_same_question() -> None:
    # Counts of "dog" and of "cat" answer different questions: a cat count never stands in for a dog count,
    # and a scene yes/no "no" pairs with a clip whose answer to the same question is "yes".
    def scene(i: int, asked: str, qtype: str, target: str, value: str) -> EvalItem:
        return EvalItem(f"s{i}", _tone(220.0 + 40 * i, i), "?", [], qtype, value, "scene", "test", target=target,
                        target_value=value, asked_value=asked, clip_id=f"c{i}")

    items = [scene(0, '["dog"]', "count", "scene.count", "2"), scene(1, '["cat"]', "count", "scene.count", "3"),
             scene(2, '["dog"]', "count", "scene.count", "1"), scene(3, '["cat"]', "count", "scene.count", "3"),
             scene(4, '["dog"]', "presence", "scene.present", "no"),
             scene(5, '["dog"]', "presence", "scene.present", "yes")]
    partners = pair_items(items, seed=0)
    assert [items[i].item_id if i is not None else None for i in partners] == ["s2", None, "s0", None, "s5", "s4"]


def test_answer_value_spans_cover_the_letter_and_option_text_in_the_response() -> None:
    mc = make_items(takes=1)[0]
    letter = mc.answer
    response = f'<RESPONSE>It matches "low tone". A low answer: {letter}</RESPONSE>'
    spans = answer_value_spans(response, mc)
    assert [response[start:end] for start, end in spans] == ["low tone", letter]
    yes_no = make_items(takes=1)[1]
    response = "<RESPONSE>Yes, it is.</RESPONSE>"
    assert [response[s:e] for s, e in answer_value_spans(response, yes_no)] == ["Yes"]
    open_item = make_items(takes=1)[2]
    response = "<RESPONSE>It is Low Tone.</RESPONSE>"
    assert [response[s:e] for s, e in answer_value_spans(response, open_item)] == ["Low Tone"]
