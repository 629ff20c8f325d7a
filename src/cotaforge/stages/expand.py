"""expand: each clip -> chain-of-thought samples across question types and prompt styles.

Inputs: `ingest/part-N`, `caption/part-N`, `ingest/run_stats.json`. Output: `expand/part-N.parquet`
(Sample rows). Staged: the question and its correct answer are fixed here from the clip's labels, metadata
or facts; the teacher then writes PLANNING, CAPTION, REASONING, SUMMARY and RESPONSE towards that answer.
Failure modes: a teacher failure becomes a reject row (`teacher_*`) carrying the raw output.

Question types of a single clip: multiple_choice (the class, or a metadata field; distractors from the
run's other classes of the same source dataset), yes_no (yes and no alternate per clip, so they balance),
open_ended (the class), comparison (longer/shorter, louder/quieter, higher/lower pitch than the run's median,
rounded). A clip with a timeline of events (a composed scene or a recording with timestamped events) gets
the scene types instead, answered from the timeline alone (`cotaforge.scene_questions`): count, order,
duration, loudness, presence, timing. The two scenes of a counterfactual twin pair are both asked one
question, worded the same, whose answer the twin's change alters; each sample's `twin_of` names the other.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass

import pyarrow as pa

from cotaforge import progress
from cotaforge.config import LLM_PROMPT_STYLE, RunConfig, stable_hash
from cotaforge.cot import option_letter, render_assistant_text
from cotaforge.describe import display_label, format_seconds
from cotaforge.models import (SCENE_QUESTION_TYPES, SCHEMA_VERSION, Rejection, StageReport, TeacherInfo,
                              count_reasons, merge_reports)
from cotaforge.prompts import load_bank, prompt_fingerprint
from cotaforge.scene_questions import TwinQuestion, plan_scene, target_snr_db, twin_question
from cotaforge.scenes import Event, events_from_json
from cotaforge.stages.caption import grounding_fields
from cotaforge.stages.ingest import load_run_stats, read_clips
from cotaforge.store import SAMPLE_SCHEMA, RunDir, fingerprint, json_dumps
from cotaforge.teacher.base import CotRequest, QuestionRequest, Teacher, TeacherFailure
from cotaforge.teacher.build import build_teacher as _build_teacher
from cotaforge.teacher.build import teacher_fingerprint
from cotaforge.textnorm import normalize_text

STAGE = "expand"
STAGE_VERSION = 2
QUESTION_PLACEHOLDERS = frozenset({"candidate", "field", "more", "less", "reference", "x", "y"})


def build_teacher(cfg: RunConfig) -> Teacher:
    """The configured teacher backend (template, openai or vllm)."""
    return _build_teacher(cfg, STAGE)


@dataclass(frozen=True)
class Comparison:
    fact: str
    quantity: str
    more: str
    less: str
    reference_value: float
    reference: str
    tolerance: float  # values this close to the reference are ambiguous and not asked about

    def measured(self, value: float) -> str:
        return {"duration_s": format_seconds(value), "loudness_dbfs": f"{value:.1f} dBFS",
                "f0_median_hz": f"{value:.0f} Hz"}[self.fact]


def _round_nice(value: float, step: float) -> float:
    return round(round(value / step) * step, 6)


def comparisons(stats: dict) -> list[Comparison]:
    """Comparison axes with references at the run's medians, rounded to values a person would say."""
    medians = stats["fact_medians"]
    axes = []
    if medians.get("duration_s"):
        d = medians["duration_s"]
        ref = _round_nice(d, 0.1 if d < 2 else 1.0 if d < 20 else 5.0)
        ref = ref or 0.1
        axes.append(Comparison("duration_s", "duration", "longer", "shorter", ref, format_seconds(ref), 0.1 * ref))
    if medians.get("loudness_dbfs") is not None:
        ref = _round_nice(medians["loudness_dbfs"], 5.0)
        axes.append(Comparison("loudness_dbfs", "average loudness", "louder", "quieter", ref,
                               f"an average level of {ref:.0f} dBFS", 2.0))
    if medians.get("f0_median_hz"):
        ref = _round_nice(medians["f0_median_hz"], 10.0)
        axes.append(Comparison("f0_median_hz", "pitch", "higher-pitched", "lower-pitched", ref,
                               f"a pitch of {ref:.0f} Hz", 0.08 * ref))
    return axes


@dataclass
class Planned:
    """A sample whose question and answer are fixed, waiting for its CoT."""

    request: CotRequest
    clip: dict
    prompt_style: str
    target: str
    target_value: str
    class_label: str = ""  # the cell balance counts the sample in; the clip's class when empty
    twin_of: str = ""  # sample_id of the twin scene's sample asked the same question
    wording_key: str = ""  # samples sharing a key share the teacher-written question (a twin pair)


def _sample_id(clip_id: str, *parts: str) -> str:
    return stable_hash([clip_id, *parts], length=20)


def plan_clip(clip: dict, caption: str, cfg: RunConfig, stats: dict, fields: list[str],
              axes: list[Comparison], bank: dict, twin: "TwinSide | None" = None) -> list[Planned]:
    """Every question of one clip, with its answer fixed from the clip's labels, metadata or facts.

    A clip with a timeline of events gets the scene questions instead (`plan_scene_clip`).
    """
    events = events_from_json(clip.get("events") or "[]")
    if events:
        return plan_scene_clip(clip, events, caption, cfg, stats, bank, twin)
    seed = cfg.run.seed
    clip_hash = int(clip["clip_id"][:8], 16)
    labels = [display_label(l) for l in clip["labels"]]
    true_class = labels[0]
    same_dataset = [display_label(c) for c in stats["classes_by_dataset"][clip["source_dataset"]]]
    pool = [c for c in same_dataset if c not in labels]
    if len(pool) < cfg.expand.n_options - 1:  # too few classes in this dataset: borrow from the whole run
        pool += [display_label(c) for c in stats["classes"] if display_label(c) not in labels + pool]
    metadata = json.loads(clip["metadata"])
    planned: list[Planned] = []

    def add(qtype: str, style: str, target: str, target_value: str, question: str, options: list[str],
            answer: str, answer_text: str, asked: str = "", field_name: str = "", grounding: dict | None = None):
        sample_id = _sample_id(clip["clip_id"], qtype, style, target, cfg.expand.question_bank)
        request = CotRequest(sample_id=sample_id, question_type=qtype, target=target, question=question,
                             options=options, answer=answer, answer_text=answer_text, caption=caption,
                             facts=clip["facts"], asked_value=asked, field_name=field_name,
                             grounding=grounding or {}, seed=seed)
        planned.append(Planned(request, clip, style, target, target_value))

    for style_index, style in enumerate(cfg.expand.prompt_styles):
        rng = random.Random(stable_hash([seed, clip["clip_id"], style]))
        if style == LLM_PROMPT_STYLE:  # the teacher writes these questions later (write_llm_questions)
            phrase = lambda qtype, kind: ""  # noqa: E731 - local shorthand
        else:
            phrase = lambda qtype, kind: rng.choice(bank[qtype][kind][style])  # noqa: E731 - local shorthand
        for qtype in cfg.expand.question_types:
            if qtype == "multiple_choice" and pool:
                n = min(cfg.expand.n_options, len(pool) + 1)
                options = rng.sample(pool, n - 1)
                correct = (clip_hash + style_index) % n  # rotates the correct letter across clips and styles
                options.insert(correct, true_class)
                add(qtype, style, "class", true_class, phrase(qtype, "class"), options, option_letter(correct),
                    f'"{true_class}"')
                usable = [f for f in fields if metadata.get(f)]
                if usable:
                    name = usable[(clip_hash + style_index) % len(usable)]
                    values = stats["metadata_values"][clip["source_dataset"]][name]
                    others = [v for v in values if v != metadata[name]]
                    n = min(cfg.expand.n_options, len(others) + 1)
                    options = rng.sample(others, n - 1)
                    correct = (clip_hash // 7 + style_index) % n
                    options.insert(correct, metadata[name])
                    human = name.replace("_", " ")
                    add(qtype, style, f"metadata.{name}", metadata[name],
                        phrase(qtype, "metadata").format(field=human), options, option_letter(correct),
                        metadata[name], field_name=human)
            elif qtype == "yes_no" and pool:
                say_yes = (clip_hash + style_index) % 2 == 0  # the styles of one clip get opposite answers
                candidate = true_class if say_yes else rng.choice(pool)
                add(qtype, style, "class", true_class, phrase(qtype, "class").format(candidate=f'"{candidate}"'),
                    [], "yes" if say_yes else "no", f'"{true_class}"', asked=candidate)
            elif qtype == "open_ended":
                add(qtype, style, "class", true_class, phrase(qtype, "class"), [], true_class, f'"{true_class}"')
            elif qtype == "comparison":
                usable_axes = [a for a in axes if clip["facts"].get(a.fact) is not None
                               and abs(clip["facts"][a.fact] - a.reference_value) > a.tolerance]
                if not usable_axes:
                    continue
                axis = usable_axes[(clip_hash + style_index) % len(usable_axes)]
                value = clip["facts"][axis.fact]
                word = axis.more if value > axis.reference_value else axis.less
                question = phrase(qtype, "fact").format(more=axis.more, less=axis.less, reference=axis.reference)
                grounding = {"quantity": axis.quantity, "reference": axis.reference, "more": axis.more,
                             "less": axis.less, "measured": axis.measured(value),
                             "reference_value": axis.reference_value, "fact": axis.fact}
                add(qtype, style, f"fact.{axis.fact}", word, question[:1].upper() + question[1:], [], word, word,
                    asked=str(axis.reference_value), grounding=grounding)
    return planned


@dataclass(frozen=True)
class TwinSide:
    """One scene of a twin pair: the question both are asked, which side this is, and the other scene."""

    question: TwinQuestion
    is_twin: bool
    partner_clip_id: str
    pair_key: str  # the original scene's clip_id: seeds the shared wording


def scene_bank_types(bank: dict, cfg: RunConfig) -> list[str]:
    """The scene question types asked: configured in expand.question_types and phrased in the bank."""
    return [t for t in cfg.expand.question_types if t in SCENE_QUESTION_TYPES and t in bank]


def absent_classes(clip: dict, events: list[Event], stats: dict) -> list[str]:
    """Classes of the scene's source dataset that it lacks (the 'no' side of presence questions)."""
    present = {e.class_label for e in events}
    pool = stats["classes_by_dataset"].get(clip["source_dataset"]) or stats["classes"]
    return [c for c in dict.fromkeys(display_label(c) for c in pool) if c not in present]


def plan_scene_clip(clip: dict, events: list[Event], caption: str, cfg: RunConfig, stats: dict, bank: dict,
                    twin: TwinSide | None = None) -> list[Planned]:
    """The scene questions of one clip with a timeline, one per scene type and prompt style.

    Answers come from the timeline (`scene_questions.plan_scene`), which skips what the margin rules leave
    uncertain. In a twin pair, the pair's question replaces the question of its type in every style, worded
    alike on both scenes. No questions when the bank has no scene phrasings (questions.v1).
    """
    types = scene_bank_types(bank, cfg)
    if not types:
        return []
    seed = cfg.run.seed
    clip_hash = int(clip["clip_id"][:8], 16)
    absent = absent_classes(clip, events, stats)
    snr_db = target_snr_db(cfg)
    duration_s = clip["facts"]["duration_s"]
    # Balance cells are by the run's class names: map the timeline's display names back to them.
    run_class = {display_label(c): c for c in stats["classes"]}
    first_class = sorted(events, key=lambda e: e.onset_s)[0].class_label
    planned: list[Planned] = []
    for style_index, style in enumerate(cfg.expand.prompt_styles):
        rng = random.Random(stable_hash([seed, clip["clip_id"], style]))
        questions = [(q, False) for q in plan_scene(events, types, clip_hash + style_index, rng, cfg.expand.n_options,
                                                    absent, snr_db, duration_s)]
        if twin is not None and twin.question.question_type in types:
            questions = [(q, False) for q, _ in questions if q.question_type != twin.question.question_type]
            questions.append((twin.question.for_scene(twin.is_twin), True))
        for question, paired in questions:
            phrase_rng = random.Random(stable_hash([seed, twin.pair_key, style, "twin"])) if paired else rng
            text = ""
            if style != LLM_PROMPT_STYLE:
                text = phrase_rng.choice(bank[question.question_type][question.form][style]).format(
                    **question.placeholders())
            id_parts = [question.question_type, style, question.target, cfg.expand.question_bank, question.form,
                        *question.asked, *(["twin"] if paired else [])]
            sample_id = _sample_id(clip["clip_id"], *id_parts)
            cell_class = question.asked[0] if question.asked else first_class
            request = CotRequest(
                sample_id=sample_id, question_type=question.question_type, target=question.target, question=text,
                options=list(question.options), answer=question.answer, answer_text=question.target_value,
                caption=caption, facts=clip["facts"], asked_value=question.asked_json, seed=seed,
                events=tuple(events), form=question.form, asked=question.asked)
            planned.append(Planned(
                request, clip, style, question.target, question.target_value,
                class_label=run_class.get(cell_class, cell_class),
                twin_of=_sample_id(twin.partner_clip_id, *id_parts) if paired else "",
                wording_key=stable_hash([twin.pair_key, style, question.form, question.asked]) if paired else ""))
    return planned


def twin_sides(clips: list[dict], cfg: RunConfig) -> tuple[dict[str, TwinSide], list[str]]:
    """Both scenes of every twin pair in the batch, with the question whose answer the change alters.

    Compose puts a twin in its original's batch. A pair left without a question (its partner is not in the
    batch, or no question is certain on both scenes) is not linked, and is counted in the notes.
    """
    by_id = {c["clip_id"]: c for c in clips}
    sides: dict[str, TwinSide] = {}
    missing = unasked = extra = 0
    snr_db = target_snr_db(cfg)
    for clip in clips:
        original_id = clip.get("twin_of_clip") or ""
        if not original_id:
            continue
        original = by_id.get(original_id)
        if original is None:
            missing += 1
            continue
        if original_id in sides:
            extra += 1
            continue
        question = twin_question(events_from_json(original["events"]), events_from_json(clip["events"]),
                                 json.loads(clip.get("twin_change") or "{}"), snr_db)
        if question is None:
            unasked += 1
            continue
        sides[clip["clip_id"]] = TwinSide(question, True, original_id, original_id)
        sides[original_id] = TwinSide(question, False, clip["clip_id"], original_id)
    notes = []
    if missing:
        notes.append(f"{missing} twin scenes left unlinked: their original scene is not in their batch")
    if unasked:
        notes.append(f"{unasked} twin pairs left unlinked: no question is certain on both scenes and differs")
    if extra:
        notes.append(f"{extra} twin scenes left unlinked: their original already has a linked twin")
    return sides, notes


def write_llm_questions(planned: list[Planned], teacher: Teacher) -> tuple[list[Planned], list[tuple[Planned, TeacherFailure]]]:
    """Questions of the `llm` prompt style, worded by the teacher around each answer fixed in `plan_clip`.

    The teacher writes the question and, for multiple choice, the wrong options; the correct option keeps the
    letter `plan_clip` chose, so answers stay fixed and letter positions stay balanced. Returns the planned
    samples that have a question, and the failures (reject rows).
    """
    asked = [item for item in planned if item.prompt_style == LLM_PROMPT_STYLE]
    if not asked:
        return planned, []
    requests = []
    shared: dict[str, int] = {}  # wording key -> the request that words it for every sample with that key
    owner = []
    for item in asked:
        req = item.request
        if item.wording_key and item.wording_key in shared:
            owner.append(shared[item.wording_key])
            continue
        if item.wording_key:
            shared[item.wording_key] = len(requests)
        owner.append(len(requests))
        if req.events:  # a scene question: the options are fixed, the teacher words the question only
            requests.append(QuestionRequest(
                sample_id=req.sample_id, question_type=req.question_type, answer_text=item.target_value,
                caption=req.caption, facts=req.facts, asked_value=req.asked_value, seed=req.seed,
                form=req.form, asked=req.asked, options=tuple(req.options)))
            continue
        avoid = tuple(display_label(l) for l in item.clip["labels"]) if item.target == "class" else ()
        requests.append(QuestionRequest(
            sample_id=req.sample_id, question_type=req.question_type, answer_text=item.target_value,
            caption=req.caption, facts=req.facts, asked_value=req.asked_value, field_name=req.field_name,
            grounding=req.grounding, n_wrong_options=max(len(req.options) - 1, 0), avoid=avoid, seed=req.seed))
    drafts = teacher.write_questions(requests)
    failed: list[tuple[Planned, TeacherFailure]] = []
    for item, draft in zip(asked, (drafts[i] for i in owner)):
        if isinstance(draft, TeacherFailure):
            failed.append((item, draft))
            continue
        req = item.request
        options: list[str] = []
        if req.events:
            options = list(req.options)
        elif req.options:
            correct = ord(req.answer) - ord("A")
            options = [normalize_text(o).strip() for o in draft.wrong_options]
            options.insert(correct, req.options[correct])
        item.request = dataclasses.replace(req, question=normalize_text(draft.question).strip(),
                                           options=options)
    dropped = {id(item) for item, _ in failed}
    return [item for item in planned if id(item) not in dropped], failed


def _teacher_reject(item: Planned, failure: TeacherFailure) -> Rejection:
    return Rejection(stage=STAGE, reason=failure.reason, reasons=[failure.reason], raw=failure.raw,
                     message=f"{item.clip['manifest_row']}: {failure.message}",
                     manifest_row=item.clip["manifest_row"], source_path=item.clip["source_path"],
                     clip_id=item.clip["clip_id"], sample_id=item.request.sample_id)


def _teacher_info(teacher: Teacher) -> dict:
    """The `teacher` column: the same for every sample of a batch."""
    return TeacherInfo(backend=teacher.backend, model=teacher.model, prompt_versions=teacher.prompt_versions(),
                       parameters=json_dumps(teacher.parameters())).model_dump()


def _sample_row(item: Planned, stages: dict[str, str], teacher_info: dict) -> dict:
    clip, req = item.clip, item.request
    return {
        "sample_id": req.sample_id, "clip_id": clip["clip_id"], "group_id": clip["group_id"],
        "source_dataset": clip["source_dataset"], "source_path": clip["source_path"], "source_id": clip["source_id"],
        "duration_s": clip["facts"]["duration_s"], "sample_rate_hz": clip["sample_rate_hz"], "labels": clip["labels"],
        "class_label": item.class_label or clip["class_label"], "metadata": clip["metadata"],
        "question_type": req.question_type,
        "prompt_style": item.prompt_style, "target": item.target, "target_value": item.target_value,
        "asked_value": req.asked_value, "question": req.question, "options": req.options, "answer": req.answer,
        **stages, "assistant_text": render_assistant_text(stages),
        "teacher": teacher_info,
        "validation": json_dumps({"grounding": req.grounding}) if req.grounding else "{}",
        "review": "", "split": "", "schema_version": SCHEMA_VERSION,
        "scene_kind": clip.get("scene_kind") or "", "events": clip.get("events") or "[]", "twin_of": item.twin_of,
    }


def batch_fingerprint(run: RunDir, cfg: RunConfig, batch: int) -> str:
    """What `expand/part-<batch>` must be made from; a part that stores another fingerprint is redone."""
    stats = load_run_stats(run)
    stats_key = {k: stats[k] for k in ("classes_by_dataset", "metadata_values", "fact_medians", "classes")}
    return fingerprint(STAGE, STAGE_VERSION, SCHEMA_VERSION, cfg.section_hash("expand"), cfg.run.seed,
                       teacher_fingerprint(cfg, STAGE), prompt_fingerprint([cfg.expand.question_bank]),
                       run.part_fingerprint("caption", batch), stable_hash([stats_key, grounding_fields(stats, cfg)]),
                       target_snr_db(cfg))


def expand_batch(run: RunDir, cfg: RunConfig, batch: int) -> StageReport:
    """Write one batch's samples into `expand/part-<batch>.parquet`; skip it if already done."""
    started = time.perf_counter()
    fp = batch_fingerprint(run, cfg, batch)
    if run.part_fingerprint(STAGE, batch) == fp:
        report = run.stored_report(STAGE, batch)
        progress.advance(STAGE, report.rows_in)
        return report
    stats = load_run_stats(run)
    teacher = build_teacher(cfg)
    bank = load_bank(cfg.expand.question_bank, QUESTION_PLACEHOLDERS)
    fields = grounding_fields(stats, cfg)
    clips = read_clips(run, batch, stats).to_pylist()
    captions = dict(zip(*(run.read_part("caption", batch, ["clip_id", "text"])[c].to_pylist()
                          for c in ("clip_id", "text"))))
    axes = comparisons(stats)
    twins, notes = twin_sides(clips, cfg)
    # A clip whose LLM caption failed has no caption row: it is already a caption reject.
    planned = [item for clip in clips if clip["clip_id"] in captions for item in
               plan_clip(clip, captions[clip["clip_id"]], cfg, stats, fields.get(clip["source_dataset"], []), axes, bank,
                         twins.get(clip["clip_id"]))]
    scenes = sum(1 for clip in clips if (clip.get("events") or "[]") != "[]")
    if scenes and not scene_bank_types(bank, cfg):
        notes.append(f"{scenes} scenes got no questions: {cfg.expand.question_bank} has no scene phrasings or "
                     "expand.question_types lists no scene type; use questions.v2")
    planned, question_failures = write_llm_questions(planned, teacher)
    rejects = [_teacher_reject(item, failure) for item, failure in question_failures]
    results = teacher.write_cots([item.request for item in planned])
    rows, teacher_info = [], _teacher_info(teacher)
    for item, result in zip(planned, results):
        if isinstance(result, TeacherFailure):
            rejects.append(_teacher_reject(item, result))
        else:
            # Teacher text in its normal form (NFKC, no control or format characters): validate then
            # refuses only what normalising cannot make plain, such as mixed-script words.
            stages = {name: normalize_text(text) for name, text in result.model_dump().items()}
            rows.append(_sample_row(item, stages, teacher_info))
    progress.advance(STAGE, len(clips))
    rejected = count_reasons(rejects)
    report = StageReport(stage=STAGE, rows_in=len(clips), rows_out=len(rows), rejected=rejected, parts_done=1,
                         seconds=time.perf_counter() - started, teacher=teacher.usage, notes=notes)
    run.write_part(STAGE, batch, pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA), fp, rejects, report)
    return report


def run_expand(run: RunDir, cfg: RunConfig) -> StageReport:
    return merge_reports(STAGE, [expand_batch(run, cfg, b) for b in range(run.batch_count())])
