"""expand: each clip -> chain-of-thought samples across question types and prompt styles.

Inputs: `ingest/part-N`, `caption/part-N`, `ingest/run_stats.json`. Output: `expand/part-N.parquet`
(Sample rows). Staged: the question and its correct answer are fixed here from the clip's labels, metadata
or facts; the teacher then writes PLANNING, CAPTION, REASONING, SUMMARY and RESPONSE towards that answer.
Failure modes: a teacher failure becomes a reject row (`teacher_*`) carrying the raw output.

Question types: multiple_choice (the class, or a metadata field; distractors from the run's other classes
of the same source dataset), yes_no (yes and no alternate per clip, so they balance), open_ended (the
class), comparison (longer/shorter, louder/quieter, higher/lower pitch than the run's median, rounded).
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
from cotaforge.models import SCHEMA_VERSION, Rejection, StageReport, TeacherInfo, count_reasons, merge_reports
from cotaforge.prompts import load_bank, prompt_fingerprint
from cotaforge.stages.caption import grounding_fields
from cotaforge.stages.ingest import load_run_stats, read_clips
from cotaforge.store import SAMPLE_SCHEMA, RunDir, fingerprint, json_dumps
from cotaforge.teacher.base import CotRequest, QuestionRequest, Teacher, TeacherFailure
from cotaforge.teacher.build import build_teacher as _build_teacher

STAGE = "expand"
STAGE_VERSION = 1
QUESTION_PLACEHOLDERS = frozenset({"candidate", "field", "more", "less", "reference"})


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


def _sample_id(clip_id: str, *parts: str) -> str:
    return stable_hash([clip_id, *parts], length=20)


def plan_clip(clip: dict, caption: str, cfg: RunConfig, stats: dict, fields: list[str],
              axes: list[Comparison], bank: dict) -> list[Planned]:
    """Every question of one clip, with its answer fixed from the clip's labels, metadata or facts."""
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
    for item in asked:
        req = item.request
        avoid = tuple(display_label(l) for l in item.clip["labels"]) if item.target == "class" else ()
        requests.append(QuestionRequest(
            sample_id=req.sample_id, question_type=req.question_type, answer_text=item.target_value,
            caption=req.caption, facts=req.facts, asked_value=req.asked_value, field_name=req.field_name,
            grounding=req.grounding, n_wrong_options=max(len(req.options) - 1, 0), avoid=avoid, seed=req.seed))
    failed: list[tuple[Planned, TeacherFailure]] = []
    for item, draft in zip(asked, teacher.write_questions(requests)):
        if isinstance(draft, TeacherFailure):
            failed.append((item, draft))
            continue
        req = item.request
        options: list[str] = []
        if req.options:
            correct = ord(req.answer) - ord("A")
            options = [o.strip() for o in draft.wrong_options]
            options.insert(correct, req.options[correct])
        item.request = dataclasses.replace(req, question=draft.question.strip(), options=options)
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
        "class_label": clip["class_label"], "metadata": clip["metadata"], "question_type": req.question_type,
        "prompt_style": item.prompt_style, "target": item.target, "target_value": item.target_value,
        "asked_value": req.asked_value, "question": req.question, "options": req.options, "answer": req.answer,
        **stages, "assistant_text": render_assistant_text(stages),
        "teacher": teacher_info,
        "validation": json_dumps({"grounding": req.grounding}) if req.grounding else "{}",
        "review": "", "split": "", "schema_version": SCHEMA_VERSION,
    }


def expand_batch(run: RunDir, cfg: RunConfig, batch: int) -> StageReport:
    """Write one batch's samples into `expand/part-<batch>.parquet`; skip it if already done."""
    started = time.perf_counter()
    stats = load_run_stats(run)
    teacher = build_teacher(cfg)
    bank = load_bank(cfg.expand.question_bank, QUESTION_PLACEHOLDERS)
    fields = grounding_fields(stats, cfg)
    stats_key = {k: stats[k] for k in ("classes_by_dataset", "metadata_values", "fact_medians", "classes")}
    fp = fingerprint(STAGE, STAGE_VERSION, cfg.section_hash("expand"), cfg.run.seed, teacher.fingerprint(),
                     prompt_fingerprint([cfg.expand.question_bank]),
                     run.part_fingerprint("caption", batch), stable_hash([stats_key, fields]))
    if run.part_fingerprint(STAGE, batch) == fp:
        report = run.stored_report(STAGE, batch)
        progress.advance(STAGE, report.rows_in)
        return report
    clips = read_clips(run, batch, stats).to_pylist()
    captions = dict(zip(*(run.read_part("caption", batch, ["clip_id", "text"])[c].to_pylist()
                          for c in ("clip_id", "text"))))
    axes = comparisons(stats)
    # A clip whose LLM caption failed has no caption row: it is already a caption reject.
    planned = [item for clip in clips if clip["clip_id"] in captions for item in
               plan_clip(clip, captions[clip["clip_id"]], cfg, stats, fields.get(clip["source_dataset"], []), axes, bank)]
    planned, question_failures = write_llm_questions(planned, teacher)
    rejects = [_teacher_reject(item, failure) for item, failure in question_failures]
    results = teacher.write_cots([item.request for item in planned])
    rows, teacher_info = [], _teacher_info(teacher)
    for item, result in zip(planned, results):
        if isinstance(result, TeacherFailure):
            rejects.append(_teacher_reject(item, result))
        else:
            rows.append(_sample_row(item, result.model_dump(), teacher_info))
    progress.advance(STAGE, len(clips))
    rejected = count_reasons(rejects)
    report = StageReport(stage=STAGE, rows_in=len(clips), rows_out=len(rows), rejected=rejected, parts_done=1,
                         seconds=time.perf_counter() - started, teacher=teacher.usage)
    run.write_part(STAGE, batch, pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA), fp, rejects, report)
    return report


def run_expand(run: RunDir, cfg: RunConfig) -> StageReport:
    return merge_reports(STAGE, [expand_batch(run, cfg, b) for b in range(run.batch_count())])
