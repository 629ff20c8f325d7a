"""The `template` teacher: deterministic, no LLM. Writes each CoT stage from the clip's measured facts,
its caption and the fixed answer, choosing sentences from `prompts/cot_template.v<N>.yaml` by a seeded hash.

For a scene question (a request with a timeline of events) the CAPTION walks through the sounds in order
with their approximate start times, and the REASONING works from the events to the answer: it lists the
times of what it counts, and compares lengths and levels with their numbers. Banks from v2 on hold the
scene sentences; v1 has none.
"""

from __future__ import annotations

import random

from cotaforge.config import stable_hash
from cotaforge.cot import option_letter
from cotaforge.describe import event_length_word, event_loudness_word, fact_phrases, format_time_s
from cotaforge.errors import ConfigError
from cotaforge.prompts import load_bank
from cotaforge.scene_questions import SOUND_ANSWER_FORMS, YES_NO_FORMS
from cotaforge.teacher.base import CotRequest, CotStages, Teacher, TeacherFailure

COT_PLACEHOLDERS = frozenset({
    "duration", "duration_adj", "duration_cap", "duration_word", "loudness", "loudness_word", "peak", "centroid",
    "brightness_word", "pitch_phrase", "texture_phrase", "onsets_phrase", "answer_text", "answer_text_cap",
    "candidate", "letter", "options_list", "others", "n_options", "more", "less", "reference", "measured",
    "field", "quantity",
    # v3: the options one per line as the user turn shows them, the check list, the heard sound unquoted
    "options_lines", "option_checks", "heard",
    # v4: the check list with each option copied, then quoted; the asked sound unquoted
    "quoted_option_checks", "asked",
    # v6: the check list with the heard sound beside each option
    "heard_option_checks",
    # scene sentences (v2 on)
    "x", "y", "ans", "n", "onset", "desc", "cls", "length_word", "loud_word", "where", "count_phrase", "listing",
    "listing_cap", "class_listing", "tx", "ty", "x_end", "t_ans", "t_next", "next", "prev", "t_prev_end",
    "lengths", "lengths_cap", "d_ans", "ratio", "levels", "levels_cap", "l_ans", "lx", "ly", "diff_db",
    "margin_db", "claim", "claim_cap",
})


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _option_checks(options: list[str], correct: int, quote: bool = False) -> str:
    """The options as the user turn lists them, each with its verdict, down to the correct one ('B. dog: yes').

    The list stops at the match, so the answer's letter is the last one written before the decision. With
    `quote`, each option's text is repeated in quotes before its verdict ('B. dog ("dog"): yes'): the line
    starts as a verbatim copy of the user turn's, and the quoted words are tokens the user turn never shows
    (a quoted `dog` is not ` dog`), so the option whose quoted words were already written is the heard one.
    """
    def line(i: int, text: str) -> str:
        shown = f'{text} ("{text}")' if quote else text
        return f"{option_letter(i)}. {shown}: {'yes' if i == correct else 'no'}"

    return "\n".join(line(i, text) for i, text in enumerate(options[: correct + 1]))


def _heard_option_checks(options: list[str], correct: int, heard: str) -> str:
    """The options as the user turn lists them, each beside the heard sound, down to the correct one
    ('A. cat, and I hear dog: they differ.'): the two sounds a verdict compares sit just before it, as in
    the yes/no chains, so one comparison serves both."""
    def line(i: int, text: str) -> str:
        verdict = "are the same" if i == correct else "differ"
        return f"{option_letter(i)}. {text}, and I hear {heard}: they {verdict}."

    return "\n".join(line(i, text) for i, text in enumerate(options[: correct + 1]))


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
        if req.events:
            return self._write_scene(req, rng)
        values = dict(fact_phrases(req.facts))
        letters = [f"{option_letter(i)} ({text})" for i, text in enumerate(req.options)]
        correct = ord(req.answer) - ord("A") if req.question_type == "multiple_choice" else -1
        values.update(
            answer_text=req.answer_text, answer_text_cap=req.answer_text[:1].upper() + req.answer_text[1:],
            candidate=f'"{req.asked_value}"' if req.asked_value else "", letter=req.answer if req.options else "",
            options_list=_join(letters), n_options=str(len(req.options)),
            # One line per option, as the user turn shows them ('A. text'), so a model copies them verbatim.
            options_lines="\n".join(f"{option_letter(i)}. {text}" for i, text in enumerate(req.options)),
            option_checks=_option_checks(req.options, correct),
            quoted_option_checks=_option_checks(req.options, correct, quote=True), asked=req.asked_value,
            heard=req.answer_text.strip('"'),
            heard_option_checks=_heard_option_checks(req.options, correct, req.answer_text.strip('"')),
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

    def _write_scene(self, req: CotRequest, rng: random.Random) -> CotStages:
        """A scene question's CoT: a walk through the timeline, then reasoning from the events to the answer."""
        bank = self.bank.get("scene")
        if bank is None:
            raise ConfigError(f"{self.cot_bank} has no scene sentences; set expand.cot_bank to cot_template.v2 "
                              "(or later) to write chains of thought for scenes")
        events = sorted(req.events, key=lambda e: (e.onset_s, e.offset_s))
        values = dict.fromkeys(COT_PLACEHOLDERS, "")
        values.update(fact_phrases(req.facts))
        values.update(_scene_values(req, events))
        pick = lambda options: rng.choice(options).format_map(values)  # noqa: E731 - local shorthand
        form = req.form
        variant = form
        if form in ("before", "present"):
            variant = f"{form}_{req.answer_text}"
        elif form == "count_class" and req.answer_text == "0":
            variant = "count_zero"
        claim = pick(bank["claim"]["count_class" if variant == "count_zero" else variant])
        values.update(claim=claim, claim_cap=claim[:1].upper() + claim[1:])
        mode = "multiple_choice" if req.options else "yes_no" if form in YES_NO_FORMS else "open"
        answer_mode = f"yes_no_{req.answer}" if mode == "yes_no" else mode

        loudest = max(e.level_dbfs for e in events)
        steps = []
        for i, event in enumerate(events):
            values.update(onset=format_time_s(event.onset_s), cls=f'"{event.class_label}"',
                          length_word=event_length_word(event.duration_s),
                          loud_word=event_loudness_word(event.level_dbfs, loudest))
            values["desc"] = pick(bank["desc"])
            overlaps = any(e.offset_s > event.onset_s for e in events[:i])
            key = ("walk_first" if i == 0 else "walk_over" if overlaps else
                   "walk_last" if i == len(events) - 1 else "walk_next")
            steps.append(pick(bank[key]))
        walk = "; ".join(steps)
        lead = pick(bank["caption_lead"])
        caption = lead + (walk if lead else walk[:1].upper() + walk[1:]) + ". " + pick(bank["walk_end"])
        reasoning = [pick(bank["reasoning"][variant])]
        if mode == "multiple_choice":
            reasoning.append(pick(bank["decide"]["multiple_choice"]))
        return CotStages(
            planning=pick(bank["planning"][form]),
            caption=caption,
            reasoning=" ".join(reasoning),
            summary=pick(bank["summary"][answer_mode]),
            response=pick(bank["response"][answer_mode]),
        )


def _q(name: str) -> str:
    return f'"{name}"'


def _scene_values(req: CotRequest, events: list) -> dict[str, str]:
    """Every scene placeholder, from the timeline and the fixed answer (unused ones stay empty)."""
    asked = list(req.asked)
    truth = req.answer_text
    values: dict[str, str] = {}
    values.update(n=str(len(events)), answer_text=truth, answer_text_cap=truth[:1].upper() + truth[1:],
                  ans=_q(truth) if req.form in SOUND_ANSWER_FORMS else truth,
                  class_listing=_join([_q(c) for c in dict.fromkeys(e.class_label for e in events)]))
    listing = _join([f"{_q(e.class_label)} around {format_time_s(e.onset_s)} s" for e in events])
    lengths = "; ".join(f"{_q(e.class_label)} lasts about {format_time_s(e.duration_s)} s" for e in events)
    levels = _join([f"{_q(e.class_label)} at about {e.level_dbfs:.1f} dBFS" for e in events])
    values.update(listing=listing, listing_cap=listing[:1].upper() + listing[1:], lengths=lengths,
                  lengths_cap=lengths[:1].upper() + lengths[1:], levels=levels,
                  levels_cap=levels[:1].upper() + levels[1:])
    for key, name in zip(("x", "y"), asked):
        values[key] = _q(name)
        found = [e for e in events if e.class_label == name]
        if found:
            values["t" + key] = format_time_s(found[0].onset_s)
            values["l" + key] = f"{found[0].level_dbfs:.1f}"
            if key == "x":
                values["x_end"] = format_time_s(found[0].offset_s)
    if asked:
        found = [e for e in events if e.class_label == asked[0]]
        times = [f"{format_time_s(e.onset_s)} s" for e in found]
        values["where"] = "at about " + _join(times) if times else ""
        values["count_phrase"] = f"{len(found)} time" + ("" if len(found) == 1 else "s")
    if len(asked) == 2 and values.get("lx") and values.get("ly"):
        values["diff_db"] = f"{abs(float(values['lx']) - float(values['ly'])):.0f}"
    _answer_event_values(req, events, values)
    if req.options:
        correct = ord(req.answer) - ord("A")
        values.update(letter=req.answer, n_options=str(len(req.options)),
                      options_list=_join([f"{option_letter(i)} ({t})" for i, t in enumerate(req.options)]),
                      others=_join([f"{option_letter(i)} ({t})" for i, t in enumerate(req.options) if i != correct]))
    return values


def _answer_event_values(req: CotRequest, events: list, values: dict[str, str]) -> None:
    """Times, lengths and levels of the event that answers a first/last/after/longest/shortest/loudest question."""
    form, truth = req.form, req.answer_text
    if form == "first":
        pick, following = events[0], events[1]
        values.update(t_ans=format_time_s(pick.onset_s), next=_q(following.class_label),
                      t_next=format_time_s(following.onset_s))
    elif form == "last":
        pick = max(events, key=lambda e: e.onset_s)
        before = [e for e in events if e is not pick]
        prev = max(before, key=lambda e: e.offset_s)
        values.update(t_ans=format_time_s(pick.onset_s), prev=_q(prev.class_label),
                      t_prev_end=format_time_s(prev.offset_s))
    elif form == "after":
        x = next(e for e in events if e.class_label == req.asked[0])
        pick = next(e for e in events if e.onset_s > x.onset_s)
        values["t_ans"] = format_time_s(pick.onset_s)
    elif form in ("longest", "shortest"):
        pick = (max if form == "longest" else min)(events, key=lambda e: e.duration_s)
        rivals = [e for e in events if e.class_label != truth]
        ratio = min((e.duration_s / pick.duration_s if form == "shortest" else pick.duration_s / e.duration_s)
                    for e in rivals)
        values.update(d_ans=format_time_s(pick.duration_s), ratio=f"{int(ratio * 10) / 10:g}")
    elif form == "loudest":
        pick = max(events, key=lambda e: e.level_dbfs)
        margin = min(pick.level_dbfs - e.level_dbfs for e in events if e.class_label != truth)
        values.update(l_ans=f"{pick.level_dbfs:.1f}", margin_db=f"{int(margin)}")
