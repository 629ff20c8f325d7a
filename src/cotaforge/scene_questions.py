"""Questions about a timeline of sound events, answered from the timeline alone.

Six question types, each with one or more forms (what the question asks):

    count     count_class  how many times is X heard          scene.count   digits, e.g. "3"
              count_all    how many sounds are there          scene.count   digits
    order     first        which sound comes first            scene.first   a class name
              last         which sound comes last             scene.last    a class name
              after        what comes right after X           scene.after   a class name
              before       is X heard before Y                scene.before  yes / no
    duration  longest      which sound lasts longest          scene.longest a class name
              shortest     which sound is shortest            scene.shortest a class name
    loudness  louder       which is louder, X or Y            scene.louder  a class name (X or Y)
              loudest      which sound is loudest             scene.loudest a class name
    presence  present      is X in this recording             scene.present yes / no
    timing    onset        when does X start                  scene.onset   seconds, one decimal, e.g. "1.2"

A multiple-choice question's answer is its option letter, and the option's text equals the true value.
`answer_for` is the one place an answer is derived: the planner asks it, and validate asks it again. It
re-checks the margin rules of `cotaforge.scenes` for the events the question depends on, on any timeline,
and returns None when the answer would not be certain to a listener, so such a question is never asked.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from cotaforge.cot import option_letter
from cotaforge.describe import format_time_s
from cotaforge.models import SCENE_QUESTION_TYPES
from cotaforge.scenes import (MIN_LEVEL_DIFF_DB, MIN_ONSET_OPTION_GAP_S, Event, all_separated,
                              durations_distinct, level_above_rest_db, levels_distinct, separated)

FORMS: dict[str, tuple[str, ...]] = {
    "count": ("count_class", "count_all"),
    "order": ("first", "last", "after", "before"),
    "duration": ("longest", "shortest"),
    "loudness": ("louder", "loudest"),
    "presence": ("present",),
    "timing": ("onset",),
}
TYPE_OF_FORM = {form: qtype for qtype, forms in FORMS.items() for form in forms}
TARGET_OF_FORM = {"count_class": "scene.count", "count_all": "scene.count", "first": "scene.first",
                  "last": "scene.last", "after": "scene.after", "before": "scene.before", "longest": "scene.longest",
                  "shortest": "scene.shortest", "louder": "scene.louder", "loudest": "scene.loudest",
                  "present": "scene.present", "onset": "scene.onset"}
SCENE_TARGETS = tuple(dict.fromkeys(TARGET_OF_FORM.values()))
YES_NO_FORMS = frozenset({"before", "present"})
SOUND_ANSWER_FORMS = frozenset({"first", "last", "after", "longest", "shortest", "louder", "loudest"})  # a class name
ASKED_COUNT = {"count_class": 1, "count_all": 0, "first": 0, "last": 0, "after": 1, "before": 2, "longest": 0,
               "shortest": 0, "louder": 2, "loudest": 0, "present": 1, "onset": 1}
DEFAULT_TARGET_SNR_DB = 6.0  # an event asked about stays this far above what overlaps it (compose's default)


def form_of(target: str, asked: list[str]) -> str:
    """The form of a scene question from its target and the classes it asks about."""
    if target == "scene.count":
        return "count_class" if asked else "count_all"
    forms = [f for f, t in TARGET_OF_FORM.items() if t == target]
    if len(forms) != 1:
        raise ValueError(f"unknown scene target {target!r}; expected one of {', '.join(SCENE_TARGETS)}")
    return forms[0]


def target_snr_db(cfg: object) -> float:
    """`compose.min_target_snr_db` of a run config, or the default where the config has none."""
    compose = getattr(cfg, "compose", None)
    return float(getattr(compose, "min_target_snr_db", DEFAULT_TARGET_SNR_DB))


# -- certainty ----------------------------------------------------------------------------------------------


def audible(event: Event, events: list[Event], snr_db: float) -> bool:
    """Whether `event` stands at least `snr_db` above the summed level of the events that overlap it."""
    return level_above_rest_db(event, events) >= snr_db


def _apart_from_all(event: Event, events: list[Event]) -> bool:
    return all(e is event or separated(event, e) for e in events)


def _once(cls: str, events: list[Event]) -> Event | None:
    found = [e for e in events if e.class_label == cls]
    return found[0] if len(found) == 1 else None


def answer_for(form: str, asked: list[str], events: list[Event], snr_db: float = DEFAULT_TARGET_SNR_DB) -> str | None:
    """The true answer (plain text) of a question on this timeline, or None when it is not certain.

    None when the margin rules fail for the events the answer rests on: overlapping or too-close events
    for counts and order, durations within MIN_DURATION_RATIO, levels within MIN_LEVEL_DIFF_DB, an event
    asked about that is masked by what overlaps it, or a class asked about that does not occur as the form
    needs (once for after, before, louder and onset).
    """
    events = sorted(events, key=lambda e: (e.onset_s, e.offset_s))
    if len(asked) != ASKED_COUNT.get(form, -1) or not events:
        return None
    if form == "count_all":
        return str(len(events)) if all_separated(events) else None
    if form == "count_class":
        found = [e for e in events if e.class_label == asked[0]]
        if not all_separated(found) or not all(audible(e, events, snr_db) for e in found):
            return None
        return str(len(found))
    if form in ("first", "last"):
        if len(events) < 2:
            return None
        pick = events[0] if form == "first" else max(events, key=lambda e: e.onset_s)
        return pick.class_label if _apart_from_all(pick, events) else None
    if form == "after":
        x = _once(asked[0], events)
        if x is None or not _apart_from_all(x, events):
            return None
        later = [e for e in events if e.onset_s > x.onset_s]
        if not later:
            return None
        nxt = later[0]
        return nxt.class_label if _apart_from_all(nxt, events) else None
    if form == "before":
        x, y = _once(asked[0], events), _once(asked[1], events)
        if x is None or y is None or x is y or not separated(x, y):
            return None
        if not (audible(x, events, snr_db) and audible(y, events, snr_db)):
            return None
        return "yes" if x.onset_s < y.onset_s else "no"
    if form in ("longest", "shortest"):
        key = (lambda e: e.duration_s) if form == "longest" else (lambda e: -e.duration_s)
        pick = max(events, key=key)
        rivals = [e for e in events if e.class_label != pick.class_label]
        if not rivals or not all(durations_distinct(pick, e) and key(pick) > key(e) for e in rivals):
            return None
        return pick.class_label if audible(pick, events, snr_db) else None
    if form == "louder":
        x, y = _once(asked[0], events), _once(asked[1], events)
        if x is None or y is None or x is y or not levels_distinct(x, y):
            return None
        if not (audible(x, events, snr_db) and audible(y, events, snr_db)):
            return None
        return (x if x.level_dbfs > y.level_dbfs else y).class_label
    if form == "loudest":
        pick = max(events, key=lambda e: e.level_dbfs)
        rivals = [e for e in events if e.class_label != pick.class_label]
        if not rivals or not all(pick.level_dbfs - e.level_dbfs >= MIN_LEVEL_DIFF_DB for e in rivals):
            return None
        return pick.class_label if audible(pick, events, snr_db) else None
    if form == "present":
        found = [e for e in events if e.class_label == asked[0]]
        if not found:
            return "no"
        return "yes" if any(audible(e, events, snr_db) for e in found) else None
    if form == "onset":
        x = _once(asked[0], events)
        return format_time_s(x.onset_s) if x is not None and audible(x, events, snr_db) else None
    return None


# -- planning -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneQuestion:
    """A scene question with its answer fixed: what the question phrasing and the CoT are written from."""

    question_type: str
    form: str
    asked: tuple[str, ...]
    target_value: str  # the true answer as plain text
    options: tuple[str, ...] = ()  # multiple choice: option texts, one of them equal to target_value
    answer: str = ""  # the letter for multiple choice, else target_value

    @property
    def target(self) -> str:
        return TARGET_OF_FORM[self.form]

    @property
    def asked_json(self) -> str:
        return json.dumps(list(self.asked), ensure_ascii=False)

    def placeholders(self) -> dict[str, str]:
        """{x} and {y} of a question phrasing: the classes asked about, quoted."""
        names = [f'"{c}"' for c in self.asked]
        return {"x": names[0] if names else "", "y": names[1] if len(names) > 1 else ""}


def _with_options(question: SceneQuestion, options: list[str]) -> SceneQuestion:
    letter = option_letter(options.index(question.target_value))
    return SceneQuestion(question.question_type, question.form, question.asked, question.target_value,
                         tuple(options), letter)


def _place(truth: str, others: list[str], position: int) -> list[str]:
    """The other options in their order, with the true one inserted at `position` (so letters rotate)."""
    options = list(others)
    options.insert(position % (len(others) + 1), truth)
    return options


def count_options(true_count: int, n_options: int, position: int, minimum: int = 0) -> list[str]:
    """`n_options` consecutive counts around the true one (none below `minimum`), the true one at `position`."""
    low = max(min(minimum, true_count), true_count - position % n_options)
    values = range(low, low + n_options)
    return _place(str(true_count), [str(v) for v in values if v != true_count], position)


def onset_options(onset_s: float, duration_s: float, n_options: int, position: int, rng: random.Random) -> list[str]:
    """Start times at least MIN_ONSET_OPTION_GAP_S apart, inside the recording, the true one at `position`.

    Fewer than `n_options` when the recording is too short for them; an empty list when not even two fit.
    """
    step = round(MIN_ONSET_OPTION_GAP_S + rng.choice((0.0, 0.2, 0.4, 0.5)), 1)
    truth = round(onset_s, 1)
    below = int((truth + 1e-9) // step)
    above = int((duration_s - truth + 1e-9) // step)
    n = min(n_options, below + above + 1)
    if n < 2:
        return []
    k = min(position % n_options, below, n - 1)
    k = max(k, n - 1 - above)
    others = [format_time_s(truth + (i - k) * step) for i in range(n) if i != k]
    return _place(format_time_s(truth), others, position % n)


def _choice_options(answer: str, classes: list[str], n_options: int, position: int, rng: random.Random) -> list[str]:
    """The scene's classes as options (at most `n_options`), the answer at `position`."""
    others = [c for c in classes if c != answer]
    return _place(answer, rng.sample(others, min(n_options - 1, len(others))), position)


def _candidates(form: str, events: list[Event], absent: list[str]) -> list[list[str]]:
    classes = list(dict.fromkeys(e.class_label for e in events))
    once = [c for c in classes if sum(e.class_label == c for e in events) == 1]
    if ASKED_COUNT[form] == 0:
        return [[]]
    if form == "count_class":
        return [[c] for c in classes]
    if form == "present":
        return [[c] for c in classes] + [[c] for c in absent]
    if form in ("after", "onset"):
        return [[c] for c in once]
    return [[a, b] for a in once for b in once if a != b]  # before, louder


def plan_scene(events: list[Event], question_types: list[str], rotation: int, rng: random.Random,
               n_options: int, absent_classes: list[str], snr_db: float = DEFAULT_TARGET_SNR_DB,
               duration_s: float | None = None) -> list[SceneQuestion]:
    """At most one certain question per scene question type for one timeline and one prompt style.

    `rotation` (a clip hash plus the style's index) turns the choice of form, multiple choice or open, the
    yes/no side and the correct letter from clip to clip and style to style, so answers spread evenly;
    `rng` (seeded per clip and style) picks among the classes that qualify. `absent_classes` are classes of
    the same source dataset that the scene lacks, the "no" side of presence questions. A form whose every
    candidate fails the margin rules is passed over for the next form of the type.
    """
    events = sorted(events, key=lambda e: (e.onset_s, e.offset_s))
    duration_s = duration_s if duration_s is not None else max((e.offset_s for e in events), default=0.0)
    classes = list(dict.fromkeys(e.class_label for e in events))
    planned: list[SceneQuestion] = []
    for type_index, qtype in enumerate(SCENE_QUESTION_TYPES):
        if qtype not in question_types:
            continue
        turn = rotation + type_index
        forms = FORMS[qtype]
        for form in [forms[(turn + i) % len(forms)] for i in range(len(forms))]:
            question = _plan_form(form, events, classes, absent_classes, turn, rng, n_options, snr_db, duration_s)
            if question is not None:
                planned.append(question)
                break
    return planned


def _plan_form(form: str, events: list[Event], classes: list[str], absent: list[str], turn: int,
               rng: random.Random, n_options: int, snr_db: float, duration_s: float) -> SceneQuestion | None:
    qtype = TYPE_OF_FORM[form]
    turn //= len(FORMS[qtype])  # what is left of the rotation once the form is chosen: the choices below
    answered = [(asked, answer_for(form, asked, events, snr_db)) for asked in _candidates(form, events, absent)]
    answered = [(asked, value) for asked, value in answered if value is not None]
    if not answered:
        return None
    if form in YES_NO_FORMS:  # alternate yes and no where both are possible
        want = "yes" if turn % 2 == 0 else "no"
        answered = [a for a in answered if a[1] == want] or answered
    elif form == "louder":  # alternate the louder one between the first and the second named
        want = turn % 2
        answered = [a for a in answered if a[0].index(a[1]) == want] or answered
    asked, value = rng.choice(answered)
    question = SceneQuestion(qtype, form, tuple(asked), value, answer=value)
    multiple_choice = (turn // 2) % 2 == 0  # independent of the yes/no and first/second alternation
    if form in YES_NO_FORMS or form == "louder" or not multiple_choice:
        return question
    position = turn // 4
    if form in ("count_class", "count_all"):
        minimum = 0 if form == "count_class" else 1
        return _with_options(question, count_options(int(value), n_options, position, minimum))
    if form == "onset":
        onset = next(e.onset_s for e in events if e.class_label == asked[0])
        options = onset_options(onset, duration_s, n_options, position, rng)
        return _with_options(question, options) if options else question
    if len(classes) < 2:
        return question
    return _with_options(question, _choice_options(value, classes, n_options, position, rng))


@dataclass(frozen=True)
class TwinQuestion:
    """The question asked of both scenes of a twin pair, with each scene's answer (they differ)."""

    question_type: str
    form: str
    asked: tuple[str, ...]
    original_value: str
    twin_value: str

    def for_scene(self, is_twin: bool) -> SceneQuestion:
        value = self.twin_value if is_twin else self.original_value
        return SceneQuestion(self.question_type, self.form, self.asked, value, answer=value)


def twin_question(original: list[Event], twin: list[Event], change: dict,
                  snr_db: float = DEFAULT_TARGET_SNR_DB) -> TwinQuestion | None:
    """The first question (in a fixed order) whose answer the twin's change alters, certain on both scenes.

    A swap asks about order (is X before Y; first; last; after X); a removal or a repetition asks how many
    times the changed event's class is heard (then how many sounds). The order is fixed, so both scenes of a
    pair, planned in different batches or runs, get the same question. None when no question qualifies.
    """
    original = sorted(original, key=lambda e: (e.onset_s, e.offset_s))
    kind = change.get("kind")
    if kind == "swap":
        i, j = change["events"]
        xs = [original[i].class_label, original[j].class_label]
        classes = list(dict.fromkeys(e.class_label for e in original))
        candidates = [("before", [xs[0], xs[1]]), ("before", [xs[1], xs[0]]), ("first", []), ("last", [])]
        candidates += [("after", [c]) for c in classes]
    elif kind in ("remove", "repeat"):
        cls = original[change["event"]].class_label
        candidates = [("count_class", [cls]), ("count_all", [])]
    else:
        return None
    for form, asked in candidates:
        a, b = answer_for(form, asked, original, snr_db), answer_for(form, asked, twin, snr_db)
        if a is not None and b is not None and a != b:
            return TwinQuestion(TYPE_OF_FORM[form], form, tuple(asked), a, b)
    return None

