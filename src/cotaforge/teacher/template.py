"""The `template` teacher: deterministic, no LLM. Writes each CoT stage from the clip's measured facts,
its caption and the fixed answer, choosing sentences from `prompts/cot_template.v1.yaml` by a seeded hash.
"""

from __future__ import annotations

import random

from cotaforge.config import stable_hash
from cotaforge.cot import option_letter
from cotaforge.describe import fact_phrases
from cotaforge.prompts import load_bank
from cotaforge.teacher.base import CotRequest, CotStages, Teacher, TeacherFailure

COT_PLACEHOLDERS = frozenset({
    "duration", "duration_adj", "duration_cap", "duration_word", "loudness", "loudness_word", "peak", "centroid",
    "brightness_word", "pitch_phrase", "texture_phrase", "onsets_phrase", "answer_text", "answer_text_cap",
    "candidate", "letter", "options_list", "others", "n_options", "more", "less", "reference", "measured",
    "field", "quantity",
})


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


class TemplateTeacher(Teacher):
    backend = "template"
    model = "template"

    def __init__(self, cot_bank: str = "cot_template.v1") -> None:
        super().__init__()
        self.cot_bank = cot_bank
        self.bank = load_bank(cot_bank, COT_PLACEHOLDERS)

    def prompt_versions(self) -> list[str]:
        return [self.cot_bank]

    def write_cots(self, requests: list[CotRequest]) -> list[CotStages | TeacherFailure]:
        return [self._write(request) for request in requests]

    def _write(self, req: CotRequest) -> CotStages:
        rng = random.Random(stable_hash([req.seed, req.sample_id, self.cot_bank]))
        values = dict(fact_phrases(req.facts))
        letters = [f"{option_letter(i)} ({text})" for i, text in enumerate(req.options)]
        correct = ord(req.answer) - ord("A") if req.question_type == "multiple_choice" else -1
        values.update(
            answer_text=req.answer_text, answer_text_cap=req.answer_text[:1].upper() + req.answer_text[1:],
            candidate=f'"{req.asked_value}"' if req.asked_value else "", letter=req.answer if req.options else "",
            options_list=_join(letters), n_options=str(len(req.options)),
            others=_join([f"{option_letter(i)} ({t})" for i, t in enumerate(req.options) if i != correct]),
            field=req.field_name, **{k: str(v) for k, v in req.grounding.items()},
        )
        kind = req.question_type
        if kind == "multiple_choice" and req.target.startswith("metadata."):
            kind = "multiple_choice_metadata"
        answer_kind = f"yes_no_{req.answer}" if kind == "yes_no" else kind
        pick = lambda options: rng.choice(options).format_map(values)  # noqa: E731 - local shorthand
        bank = self.bank
        plan_kind = "multiple_choice_metadata" if kind == "multiple_choice_metadata" else req.question_type
        sentences = [pick(bank["observation"]), pick(bank["timbre"]), pick(bank["texture"])]
        rng.shuffle(sentences)  # facts in a varying order, so reasoning does not read as one fixed form
        if kind not in ("comparison", "multiple_choice_metadata"):
            sentences.append(pick(bank["identify"]))
        sentences.append(pick(bank["decide"][answer_kind]))
        return CotStages(
            planning=pick(bank["planning"][plan_kind]),
            caption=pick(bank["caption_lead"]) + req.caption,
            reasoning=" ".join(sentences),
            summary=pick(bank["summary"][answer_kind]),
            response=pick(bank["response"][answer_kind]),
        )
