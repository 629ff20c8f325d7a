"""Scene questions: answers from the timeline alone, margin rules that skip doubtful questions, twins, the
template chain of thought that walks the timeline, and the whole pipeline over composed scenes."""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from dataclasses import replace

import pyarrow.parquet as pq
import pytest

from cotaforge.claims import fact_contradictions, fact_references, timeline_contradictions
from cotaforge.scene_questions import (FORMS, SCENE_TARGETS, answer_for, count_options, onset_options, plan_scene,
                                       twin_question)
from cotaforge.scenes import MIN_ONSET_OPTION_GAP_S, Event, events_to_json
from cotaforge.teacher.base import CotRequest
from cotaforge.teacher.template import TemplateTeacher

from tests.teacher.conftest import fake_server, teacher_config  # noqa: F401 - the fake server fixture

from ..conftest import EXAMPLES, _subset_manifest, make_config, read_stage

TYPES = list(FORMS)
FACTS = {"duration_s": 5.0, "loudness_dbfs": -20.0, "peak_dbfs": -3.0, "clipping_ratio": 0.0, "silence_ratio": 0.4,
         "spectral_centroid_hz": 1200.0, "onset_count": 4, "tempo_bpm": None, "f0_median_hz": None,
         "voiced_ratio": 0.1}


def ev(cls: str, onset_s: float, offset_s: float, level_dbfs: float = -20.0) -> Event:
    return Event(class_label=cls, source_path=f"audio/{cls}_1.wav", source_id="", clip_id=f"{cls}0001",
                 onset_s=onset_s, offset_s=offset_s, gain_db=0.0, level_dbfs=level_dbfs)


# snare twice, a long kick between, a quiet tom last: every form has a certain answer.
SEQUENCE = [ev("snare", 0.3, 0.6, -12.0), ev("kick", 1.1, 2.6, -24.0), ev("snare", 3.0, 3.3, -12.5),
            ev("tom", 3.8, 4.4, -30.0)]


# -- answers from the timeline ---------------------------------------------------------------------------------

@pytest.mark.parametrize("form,asked,expected", [
    ("count_class", ["snare"], "2"), ("count_class", ["kick"], "1"), ("count_all", [], "4"),
    ("first", [], "snare"), ("last", [], "tom"), ("after", ["kick"], "snare"), ("after", ["tom"], None),
    ("before", ["kick", "tom"], "yes"), ("before", ["tom", "kick"], "no"),
    ("before", ["snare", "tom"], None),  # snare occurs twice: "before" would be ambiguous
    ("longest", [], "kick"), ("shortest", [], "snare"), ("louder", ["kick", "tom"], "kick"),
    ("louder", ["tom", "kick"], "kick"), ("loudest", [], "snare"),
    ("present", ["tom"], "yes"), ("present", ["crash"], "no"), ("onset", ["kick"], "1.1"), ("onset", ["snare"], None),
])
def test_answers_come_from_the_timeline(form, asked, expected):
    assert answer_for(form, asked, SEQUENCE) == expected


def test_answers_do_not_depend_on_the_order_events_are_listed_in():
    shuffled = list(reversed(SEQUENCE))
    for form, asked in [("first", []), ("last", []), ("after", ["kick"]), ("count_all", []), ("onset", ["tom"])]:
        assert answer_for(form, asked, shuffled) == answer_for(form, asked, SEQUENCE)


def test_margins_skip_what_a_listener_could_not_be_sure_of():
    close = [ev("snare", 0.3, 0.6), ev("kick", 0.7, 1.5), ev("tom", 2.0, 2.5)]  # 0.1 s gap < 0.25 s
    assert answer_for("count_all", [], close) is None
    assert answer_for("first", [], close) is None
    assert answer_for("before", ["snare", "kick"], close) is None
    assert answer_for("last", [], close) == "tom"  # the last one is clear of the others
    similar = [ev("snare", 0.3, 1.3), ev("kick", 2.0, 3.4)]  # 1.0 s vs 1.4 s: ratio 1.4 < 1.5
    assert answer_for("longest", [], similar) is None and answer_for("shortest", [], similar) is None
    level = [ev("snare", 0.3, 0.6, -20.0), ev("kick", 1.0, 1.5, -25.0)]  # 5 dB apart < 6 dB
    assert answer_for("louder", ["snare", "kick"], level) is None and answer_for("loudest", [], level) is None
    overlap = [ev("snare", 0.3, 1.0), ev("kick", 0.9, 1.5)]
    assert answer_for("count_all", [], overlap) is None and answer_for("count_class", ["snare"], overlap) is None


def test_a_masked_event_in_a_mixture_is_never_asked_about():
    # rain under the whole scene; the dog 10 dB above it, the bell only 3 dB above it.
    mixture = [ev("rain", 0.0, 4.0, -30.0), ev("dog", 0.5, 1.0, -20.0), ev("bell", 2.0, 2.6, -27.0)]
    assert answer_for("present", ["dog"], mixture) == "yes"
    assert answer_for("onset", ["dog"], mixture) == "0.5"
    assert answer_for("present", ["bell"], mixture) is None
    assert answer_for("onset", ["bell"], mixture) is None
    assert answer_for("before", ["dog", "bell"], mixture) is None
    assert answer_for("present", ["bell"], mixture, snr_db=2.0) == "yes"  # a lower SNR rule admits it
    assert answer_for("first", [], mixture) is None  # the rain overlaps everything


# -- the planner ---------------------------------------------------------------------------------------------

def _plans(events, rotations=range(16), **kwargs):
    return [q for r in rotations for q in plan_scene(events, TYPES, r, random.Random(r), 4, ["crash", "hihat"],
                                                     duration_s=5.0, **kwargs)]


def test_every_form_is_planned_with_a_correct_answer():
    plans = _plans(SEQUENCE, range(64))
    assert {q.form for q in plans} == {f for forms in FORMS.values() for f in forms}
    assert {q.target for q in plans} == set(SCENE_TARGETS)
    for q in plans:
        assert q.target_value == answer_for(q.form, list(q.asked), SEQUENCE)
        if q.options:
            assert q.options[ord(q.answer) - 65] == q.target_value and len(set(q.options)) == len(q.options)
            assert len(q.options) <= 4
        else:
            assert q.answer == q.target_value
        assert json.loads(q.asked_json) == list(q.asked)


def test_forms_multiple_choice_and_open_and_yes_no_sides_all_occur():
    plans = _plans(SEQUENCE, range(64))
    count = [q for q in plans if q.question_type == "count"]
    assert any(q.options for q in count) and any(not q.options for q in count)
    timing = [q for q in plans if q.question_type == "timing"]
    assert any(q.options for q in timing) and any(not q.options for q in timing)
    assert {q.answer for q in plans if q.form == "present"} == {"yes", "no"}
    assert {q.answer for q in plans if q.form == "before"} == {"yes", "no"}
    louder = [q for q in plans if q.form == "louder"]
    assert {q.asked.index(q.target_value) for q in louder} == {0, 1}  # the louder one named first and second
    letters = Counter(q.answer for q in plans if q.options)
    assert set(letters) == {"A", "B", "C", "D"}
    # "no" comes from a class the scene lacks
    assert all(q.asked[0] in ("crash", "hihat") for q in plans if q.form == "present" and q.answer == "no")


def test_timing_and_count_options():
    for position in range(4):
        options = onset_options(2.3, 6.0, 4, position, random.Random(position))
        assert "2.3" in options and options.index("2.3") == position % len(options)
        values = sorted(float(o) for o in options)
        assert all(b - a >= MIN_ONSET_OPTION_GAP_S - 1e-9 for a, b in zip(values, values[1:]))
        assert values[0] >= 0 and values[-1] <= 6.0
        counts = sorted(map(int, count_options(2, 4, position)))
        assert count_options(2, 4, position).index("2") == position % 4
        assert counts == list(range(counts[0], counts[0] + 4)) and counts[0] >= 0 and 2 in counts
    assert sorted(count_options(1, 4, 3, minimum=1), key=int) == ["1", "2", "3", "4"]  # never below the minimum
    assert onset_options(0.2, 0.9, 4, 0, random.Random(0)) == []  # no room for two options 1 s apart


def test_planning_is_deterministic_and_skips_doubtful_types():
    first = _plans(SEQUENCE)
    assert first == _plans(SEQUENCE)
    close = [ev("snare", 0.3, 0.6), ev("kick", 0.7, 1.2), ev("tom", 1.3, 1.8)]  # all gaps 0.1 s, equal levels
    plans = _plans(close)
    forms = {q.form for q in plans}
    assert not forms & {"count_all", "first", "last", "after", "louder", "loudest", "longest"}
    # what stays certain: one of each class is countable, snare and tom (0.7 s apart) can be ordered, and the
    # snare (0.3 s) is 1.67x shorter than the others
    assert forms == {"count_class", "before", "shortest", "present", "onset"}
    assert all(set(q.asked) == {"snare", "tom"} for q in plans if q.form == "before")
    for q in plans:
        assert answer_for(q.form, list(q.asked), close) == q.target_value


def test_twins_are_asked_a_question_whose_answer_differs():
    a, b, c = ev("snare", 0.3, 0.6), ev("kick", 1.1, 1.6), ev("tom", 2.2, 2.8)
    swapped = [replace(c, onset_s=1.1, offset_s=1.7), replace(b, onset_s=2.2, offset_s=2.7), a]
    q = twin_question([a, b, c], swapped, {"kind": "swap", "events": [1, 2]})
    assert q.form == "before" and q.original_value != q.twin_value
    removed = twin_question([a, b, replace(a, onset_s=2.2, offset_s=2.5)], [a, b], {"kind": "remove", "event": 2})
    assert (removed.form, removed.asked, removed.original_value, removed.twin_value) == ("count_class", ("snare",),
                                                                                         "2", "1")
    repeated = twin_question([a, b], [a, b, replace(b, onset_s=2.2, offset_s=2.7)], {"kind": "repeat", "event": 1})
    assert repeated.form == "count_class" and (repeated.original_value, repeated.twin_value) == ("1", "2")
    assert twin_question([a, b], [a, b], {"kind": "swap", "events": [0, 1]}) is None  # nothing changed


# -- the template chain of thought ------------------------------------------------------------------------------

def _cot(events, q, sample_id="s"):
    request = CotRequest(sample_id=sample_id, question_type=q.question_type, target=q.target, question="?",
                         options=list(q.options), answer=q.answer, answer_text=q.target_value, caption="", facts=FACTS,
                         asked_value=q.asked_json, events=tuple(events), form=q.form, asked=q.asked)
    return TemplateTeacher("cot_template.v2").write_cots([request])[0]


MIXTURE = [ev("rain", 0.0, 4.5, -32.0), ev("dog", 0.5, 1.0, -18.0), ev("bell", 2.0, 3.6, -19.0)]


@pytest.mark.parametrize("events", [SEQUENCE, MIXTURE], ids=["sequence", "mixture"])
def test_template_cots_walk_the_timeline_and_pass_both_claim_checks(events):
    plans = _plans(events, range(48))
    assert plans
    for i, q in enumerate(plans):
        cot = _cot(events, q, f"s{i}")
        text = cot.caption + "\n" + cot.reasoning
        asked = list(q.asked)
        options = [float(o) for o in q.options] if q.form == "onset" else []
        assert timeline_contradictions(text, events, 5.0, asked, options) == [], (q, text)
        assert fact_contradictions(text, fact_references(FACTS, None, events, options)) == [], (q, text)
        # the walk names every sound in onset order, each with its start time
        positions = [cot.caption.find(f'"{e.class_label}"', 0) for e in events]
        assert all(p >= 0 for p in positions)
        for e in events:
            assert f"{e.onset_s:.1f} s" in cot.caption


def test_template_reasoning_counts_and_compares_with_numbers():
    count = next(q for q in _plans(SEQUENCE, range(64)) if q.form == "count_class" and q.asked == ("snare",))
    reasoning = _cot(SEQUENCE, count).reasoning
    assert "0.3 s" in reasoning and "3.0 s" in reasoning and "2 times" in reasoning
    louder = next(q for q in _plans(SEQUENCE, range(64)) if q.form == "louder")
    assert "dBFS" in _cot(SEQUENCE, louder).reasoning
    longest = next(q for q in _plans(SEQUENCE, range(64)) if q.form == "longest")
    assert "1.5 s" in _cot(SEQUENCE, longest).reasoning  # the kick's length


def test_the_v1_sentence_bank_refuses_scenes_with_a_clear_error():
    from cotaforge.errors import ConfigError

    q = _plans(SEQUENCE)[0]
    request = CotRequest(sample_id="s", question_type=q.question_type, target=q.target, question="?", options=[],
                         answer=q.answer, answer_text=q.target_value, caption="", facts=FACTS, events=tuple(SEQUENCE),
                         form=q.form, asked=q.asked)
    with pytest.raises(ConfigError, match="cot_template.v2"):
        TemplateTeacher("cot_template.v1").write_cots([request])


# -- expand on hand-built scene clips --------------------------------------------------------------------------

def _scene_clip(clip_id: str, events: list[Event], twin_of: str = "", change: dict | None = None) -> dict:
    return {"clip_id": clip_id, "group_id": "scene:g1", "source_dataset": "drums", "source_path": f"scene:{clip_id}",
            "source_id": "", "manifest_row": f"compose/plan.json:scene {clip_id}", "labels": ["snare", "kick", "tom"],
            "class_label": "snare", "metadata": "{}", "sample_rate_hz": 16000, "facts": FACTS, "scene_kind": "sequence",
            "events": events_to_json(events), "twin_of_clip": twin_of, "twin_change": json.dumps(change) if change else ""}


STATS = {"classes": ["crash", "hihat_closed", "kick", "snare", "tom"],
         "classes_by_dataset": {"drums": ["crash", "hihat_closed", "kick", "snare", "tom"]}}


def test_expand_plans_scene_clips_and_links_twins():
    from cotaforge.config import load_config
    from cotaforge.prompts import load_bank
    from cotaforge.stages.expand import QUESTION_PLACEHOLDERS, plan_clip, twin_sides

    cfg = load_config(None, [])
    bank = load_bank(cfg.expand.question_bank, QUESTION_PLACEHOLDERS)
    a, b, c = ev("snare", 0.3, 0.6, -12.0), ev("kick", 1.1, 2.6, -24.0), ev("tom", 3.0, 3.6, -30.0)
    original = _scene_clip("a" * 16, [a, b, c])
    twin = _scene_clip("b" * 16, [a, replace(c, onset_s=1.1, offset_s=1.7), replace(b, onset_s=2.2, offset_s=3.7)],
                       twin_of="a" * 16, change={"kind": "swap", "events": [1, 2]})
    sides, notes = twin_sides([original, twin], cfg)
    assert notes == [] and set(sides) == {"a" * 16, "b" * 16}
    planned = {clip["clip_id"]: plan_clip(clip, "caption", cfg, STATS, [], [], bank, sides.get(clip["clip_id"]))
               for clip in (original, twin)}
    for items in planned.values():
        assert {i.request.question_type for i in items} == set(TYPES)  # every type, in each style
        assert not any(i.request.question_type in ("multiple_choice", "open_ended") for i in items)
        ids = [i.request.sample_id for i in items]
        assert len(ids) == len(set(ids))
    by_id = {i.request.sample_id: i for items in planned.values() for i in items}
    linked = [i for i in by_id.values() if i.twin_of]
    assert len(linked) == 2 * len(cfg.expand.prompt_styles)
    for item in linked:
        other = by_id[item.twin_of]
        assert other.twin_of == item.request.sample_id
        assert (other.request.question, other.request.options) == (item.request.question, item.request.options)
        assert other.target_value != item.target_value
    # the cell a scene sample counts in: the run's own class name of the first sound asked about
    assert {i.class_label for i in by_id.values()} <= set(STATS["classes"])
    again = plan_clip(original, "caption", cfg, STATS, [], [], bank, sides["a" * 16])
    assert [i.request for i in again] == [i.request for i in planned["a" * 16]]


def test_under_questions_v1_a_scene_gets_no_questions():
    from cotaforge.config import load_config
    from cotaforge.prompts import load_bank
    from cotaforge.stages.expand import QUESTION_PLACEHOLDERS, plan_clip

    cfg = load_config(None, ["expand.question_bank=questions.v1", "expand.cot_bank=cot_template.v1"])
    bank = load_bank("questions.v1", QUESTION_PLACEHOLDERS)
    assert plan_clip(_scene_clip("a" * 16, SEQUENCE), "caption", cfg, STATS, [], [], bank) == []


# -- the pipeline over composed scenes ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scene_run(tmp_path_factory):
    """Drums (5 classes) with compose on: single clips and scenes through every stage to publish."""
    from cotaforge.stages.compose import run_compose

    seen: Counter = Counter()

    def keep(row):
        seen[row["label"]] += 1
        return row["label"] in {"kick", "snare", "tom", "crash", "hihat_closed"} and seen[row["label"]] <= 4

    folder = tmp_path_factory.mktemp("scenes")
    manifest = _subset_manifest(EXAMPLES / "drums" / "manifest.csv", folder / "drums", keep)
    cfg = make_config(folder / "out", [manifest], "compose.scenes=24", "compose.twin_fraction=0.5", group_by=None)
    from cotaforge.stages.ingest import run_ingest
    from cotaforge.stages.caption import run_caption
    from cotaforge.stages.expand import run_expand
    from cotaforge.stages.validate import run_validate
    from cotaforge.stages.balance import run_balance
    from cotaforge.stages.publish import dataset_dir, run_publish

    run, _ = run_ingest(cfg)
    reports = {"compose": run_compose(run, cfg)}
    for stage, function in (("caption", run_caption), ("expand", run_expand), ("validate", run_validate),
                            ("balance", run_balance), ("publish", run_publish)):
        reports[stage] = function(run, cfg)
    published = [row for path in sorted((dataset_dir(cfg) / "data").glob("*.parquet"))
                 for row in pq.read_table(path, columns=[c for c in pq.read_schema(path).names if c != "audio"]).to_pylist()]
    yield cfg, run, reports, published
    shutil.rmtree(folder, ignore_errors=True)


def test_pipeline_publishes_every_scene_type_beside_single_clips(scene_run):
    cfg, run, reports, published = scene_run
    assert {r["question_type"] for r in published} >= set(TYPES) | {"multiple_choice", "yes_no", "open_ended"}
    scenes = [r for r in published if r["scene_kind"]]
    assert {r["scene_kind"] for r in scenes} <= {"sequence", "repeat", "mixture"} and scenes
    assert all(r["events"] == "[]" and r["twin_of"] == "" for r in published if not r["scene_kind"])
    # the template teacher's scene CoTs all pass validation, both claim checks included
    assert reports["validate"].rejected == {}
    clips = {c["clip_id"]: c for c in read_stage(run, "caption")}
    for r in scenes:
        assert r["target"] in SCENE_TARGETS
        assert isinstance(json.loads(r["asked_value"]), list)
        events = [Event(**e) for e in json.loads(r["events"])]
        form = [f for f in FORMS[r["question_type"]] if answer_for(f, json.loads(r["asked_value"]), events)
                == r["target_value"]]
        assert form, r
        if r["options"]:
            assert r["options"][ord(r["answer"]) - 65] == r["target_value"]
        assert r["clip_id"] in clips


def test_pipeline_twins_are_linked_differ_and_share_a_split(scene_run):
    _, _, _, published = scene_run
    by_id = {r["sample_id"]: r for r in published}
    twins = [r for r in published if r["twin_of"]]
    assert twins
    for r in twins:
        other = by_id[r["twin_of"]]  # balance keeps pairs whole: the partner is published
        assert other["twin_of"] == r["sample_id"] and other["clip_id"] != r["clip_id"]
        assert (other["question"], other["options"]) == (r["question"], r["options"])
        assert other["target_value"] != r["target_value"] and other["split"] == r["split"]


def test_balance_spreads_scene_answers_inside_cells(scene_run):
    cfg, run, _, _ = scene_run
    plan = json.loads((run.root / "balance" / "plan.json").read_text())
    kept = read_stage(run, "balance")
    validated = read_stage(run, "validate")
    from cotaforge.stages.balance import _answer_key

    def answers(rows, cls, style, qtype):
        return Counter(_answer_key(r["question_type"], r["answer"], r["target"], r["asked_value"]) for r in rows
                       if (r["class_label"], r["prompt_style"], r["question_type"]) == (cls, style, qtype))

    promoted = set(plan["twin_keep"])
    cells = {(r["class_label"], r["prompt_style"], r["question_type"]) for r in kept if r["scene_kind"]}
    assert cells
    for cell in cells:
        got = answers([r for r in kept if r["sample_id"] not in promoted], *cell)
        supply = answers(validated, *cell)
        for key, count in supply.items():
            if got[key] < max(got.values()) - 1:
                assert got[key] == count, (cell, got, supply)
    presence = Counter(r["answer"] for r in kept if r["question_type"] == "presence")
    assert set(presence) == {"yes", "no"}
    assert {_answer_key("loudness", "kick", "scene.louder", '["kick", "tom"]'),
            _answer_key("loudness", "tom", "scene.louder", '["kick", "tom"]')} == {"first", "second"}
    assert _answer_key("count", "3", "scene.count", "[]") == "3"
    assert _answer_key("order", "kick", "scene.first", "[]") == "-"


def test_pipeline_card_and_timeline_picture(scene_run):
    cfg, _, _, _ = scene_run
    from cotaforge.stages.publish import dataset_dir

    card = (dataset_dir(cfg) / "README.md").read_text()
    for heading in ("## Questions per type", "## Question types and answers", "## Scenes"):
        assert heading in card
    assert "| count |" in card and "| presence | yes |" in card
    assert (dataset_dir(cfg) / "plots" / "scene_timelines.png").stat().st_size > 5000


# -- the LLM teacher hears the timeline, never "labels" -----------------------------------------------------------

def test_llm_teacher_gets_the_timeline_as_what_was_heard(tmp_path, fake_server):  # noqa: F811
    from cotaforge.teacher.build import build_teacher

    server = fake_server()
    teacher = build_teacher(teacher_config(tmp_path, [server.url]), "expand")
    q = next(q for q in _plans(SEQUENCE, range(64)) if q.form == "count_class" and not q.options)
    request = CotRequest(sample_id="s1", question_type=q.question_type, target=q.target, question="How many?",
                         options=[], answer=q.answer, answer_text=q.target_value, caption="A scene.", facts=FACTS,
                         asked_value=q.asked_json, events=tuple(SEQUENCE), form=q.form, asked=q.asked)
    teacher.write_cots([request])
    system, user = (m["content"] for m in server.log[0].body["messages"])
    assert "What is heard, in order:" in user
    assert 'from 1.10 s to 2.60 s (1.50 s long): a "kick" sound, at about -24 dBFS' in user
    assert f"state the number {q.answer} in digits" in user
    assert "label" not in user.replace("labels, metadata", "")  # named only in the rule that forbids it
    assert teacher.prompt_versions() == ["cot_llm.v2"]


def test_llm_scene_questions_must_name_the_sounds_and_keep_the_answer_back():
    from cotaforge.teacher.base import QuestionDraft, QuestionRequest
    from cotaforge.teacher.llm import question_problem

    after = QuestionRequest(sample_id="s", question_type="order", answer_text="snare", caption="", facts=FACTS,
                            form="after", asked=("kick",))
    assert question_problem(after, QuestionDraft(question='What comes right after the "kick"?')) is None
    assert "must name" in question_problem(after, QuestionDraft(question="What comes next?"))
    assert "gives away" in question_problem(after, QuestionDraft(question="Is it the snare after the kick?"))
    assert "leave wrong_options empty" in question_problem(
        after, QuestionDraft(question="What comes after the kick?", wrong_options=["tom"]))
    louder = QuestionRequest(sample_id="s", question_type="loudness", answer_text="kick", caption="", facts=FACTS,
                             form="louder", asked=("kick", "tom"))
    assert question_problem(louder, QuestionDraft(question="Which is louder, the kick or the tom?")) is None


def test_llm_style_twins_share_one_teacher_written_question_and_keep_their_options():
    from cotaforge.config import load_config
    from cotaforge.prompts import load_bank
    from cotaforge.stages.expand import QUESTION_PLACEHOLDERS, plan_clip, twin_sides, write_llm_questions
    from cotaforge.teacher.base import QuestionDraft, Teacher

    class Recorder(Teacher):
        backend = model = "recorder"

        def __init__(self):
            super().__init__()
            self.asked = []

        def prompt_versions(self):
            return []

        def write_cots(self, requests):
            raise AssertionError("not asked here")

        def write_questions(self, requests):
            self.asked += requests
            return [QuestionDraft(question=f"Question {i} about {', '.join(r.asked) or 'the scene'}?")
                    for i, r in enumerate(requests)]

    cfg = load_config(None, ["expand.prompt_styles=[llm]"], teacher__backend="openai",
                      teacher__base_urls=["http://127.0.0.1:9/v1"], teacher__model="m")
    bank = load_bank(cfg.expand.question_bank, QUESTION_PLACEHOLDERS)
    a, b, c = ev("snare", 0.3, 0.6, -12.0), ev("kick", 1.1, 2.6, -24.0), ev("tom", 3.0, 3.6, -30.0)
    original = _scene_clip("a" * 16, [a, b, c])
    twin = _scene_clip("b" * 16, [a, replace(c, onset_s=1.1, offset_s=1.7), replace(b, onset_s=2.2, offset_s=3.7)],
                       twin_of="a" * 16, change={"kind": "swap", "events": [1, 2]})
    sides, _ = twin_sides([original, twin], cfg)
    planned = [i for clip in (original, twin) for i in plan_clip(clip, "caption", cfg, STATS, [], [], bank,
                                                                  sides[clip["clip_id"]])]
    options_before = {i.request.sample_id: i.request.options for i in planned}
    teacher = Recorder()
    worded, failed = write_llm_questions(planned, teacher)
    assert not failed and len(teacher.asked) == len(planned) - 1  # the pair's question is asked once
    pair = [i for i in worded if i.twin_of]
    assert len(pair) == 2 and pair[0].request.question == pair[1].request.question
    assert all(r.form and r.n_wrong_options == 0 for r in teacher.asked)
    assert all(i.request.options == options_before[i.request.sample_id] for i in worded)


def test_a_recording_with_dense_overlapping_events_gets_only_certain_questions():
    from cotaforge.config import load_config
    from cotaforge.prompts import load_bank
    from cotaforge.stages.expand import QUESTION_PLACEHOLDERS, plan_clip

    # timed labels of a street recording: traffic throughout, a horn over it, two voices overlapping
    events = [ev("traffic", 0.0, 9.0, -28.0), ev("car horn", 1.0, 1.6, -14.0), ev("speech", 3.0, 5.0, -26.0),
              ev("speech", 4.5, 6.5, -27.0)]
    clip = {**_scene_clip("d" * 16, events), "scene_kind": "recording", "source_dataset": "street"}
    stats = {"classes": ["traffic", "car horn", "speech", "dog bark"],
             "classes_by_dataset": {"street": ["traffic", "car horn", "speech", "dog bark"]}}
    cfg = load_config(None, [])
    planned = plan_clip(clip, "caption", cfg, stats, [], [], load_bank(cfg.expand.question_bank, QUESTION_PLACEHOLDERS))
    assert planned
    for item in planned:
        req = item.request
        assert answer_for(req.form, list(req.asked), events) == item.target_value
        assert req.form not in ("count_all", "first", "before")  # overlapping: never certain here
        assert "speech" not in req.asked or req.form == "present"  # masked and overlapping voices
    assert {i.request.question_type for i in planned} >= {"presence", "timing"}
