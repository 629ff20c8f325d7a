"""validate: keep only samples whose format, answer and wording are right; each failure is a reason code.

Inputs: `expand/part-N` and the clips of `ingest/part-N` (to recompute every ground truth).
Output: `validate/part-N.parquet` (passing samples, `validation` JSON filled) and rejects.
Checks (reason codes): schema_invalid; missing_stage, repeated_stage, stage_order, assistant_text_mismatch;
stage_too_short, stage_too_long; ground_truth_mismatch, answer_mismatch; options_not_distinct,
options_ambiguous; response_mismatch, summary_disagrees; leak_forbidden_word, leak_source_id,
leak_answer_in_question; near_duplicate_question; text_not_normalized, mixed_script_word (hidden,
control or compatibility characters, or a word mixing look-alike scripts: see `cotaforge.textnorm`),
too_many_options (more than `expand.n_options`); cot_contradicts_facts (a number stated in CAPTION or
REASONING with a unit, in seconds, Hz, dBFS or onsets, that is off from the clip's facts, its comparison's
reference or its scene's events beyond a tolerance: see `cotaforge.claims`), cot_contradicts_timeline (a
scene's CoT whose stated times, counts or order disagree with its timeline); judge_unsupported (the optional LLM judge, `validate.judge`,
found that the reasoning does not support the answer) or a teacher_* code when the judge itself failed.
Scene answers (targets `scene.*`) are recomputed from the clip's timeline with the margin rules
(`cotaforge.scene_questions.answer_for`): an answer that differs, or is no longer certain, is a
ground_truth_mismatch. Validators return reasons; they never raise per row.
"""

from __future__ import annotations

import json
import re
import time
from functools import lru_cache
from pathlib import PurePath

import pyarrow as pa
from pydantic import TypeAdapter, ValidationError

from cotaforge import progress
from cotaforge.config import RunConfig
from cotaforge.cot import option_letter, parse_assistant_text, render_user_text
from cotaforge.describe import display_label
from cotaforge.models import COT_STAGES, Rejection, Sample, StageReport, count_reasons, merge_reports
from cotaforge.stages.ingest import load_run_stats, read_clips
from cotaforge.store import SAMPLE_SCHEMA, RunDir, fingerprint, json_dumps
from cotaforge.teacher.base import JudgeRequest, Teacher, TeacherFailure
from cotaforge.teacher.build import build_teacher, teacher_fingerprint
from cotaforge.textnorm import text_problems
from cotaforge.claims import ClipClaims, Reading, read
from cotaforge.scene_questions import (DEFAULT_TARGET_SNR_DB, TARGET_OF_FORM, YES_NO_FORMS, answer_for, form_of,
                                       target_snr_db)
from cotaforge.scenes import events_from_json

STAGE = "validate"
STAGE_VERSION = 2
CHECKS = ("schema", "format", "lengths", "ground_truth", "options", "response", "summary", "leakage",
          "near_duplicate", "cot_facts", "cot_timeline")
_WORD = re.compile(r"[\w']+", re.UNICODE)
_LETTER = re.compile(r"\b([A-Z])\b")


@lru_cache(maxsize=8192)
def _norm(text: str) -> str:
    """Case-folded, quote-free, single-spaced text; cached since a sample's texts are compared many times."""
    return " ".join(text.casefold().replace('"', " ").replace("_", " ").split())


@lru_cache(maxsize=4096)
def _phrase_pattern(phrase: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w]){re.escape(phrase)}(?![\w])")


def _contains(text: str, phrase: str) -> bool:
    """Whole-word, case-insensitive containment (so 'one' is not found inside 'someone')."""
    phrase = _norm(phrase)
    return bool(phrase) and _phrase_pattern(phrase).search(_norm(text)) is not None


def final_letter(text: str) -> str | None:
    """The last stand-alone capital letter of a multiple-choice response ('… so the answer is C')."""
    found = _LETTER.findall(text)
    return found[-1] if found else None


def _expected_value(sample: dict, clip: dict, snr_db: float = DEFAULT_TARGET_SNR_DB) -> str | None:
    """The ground truth recomputed from the clip itself, or None when the target is unknown."""
    target = sample["target"]
    if target.startswith("scene."):
        return _scene_value(sample, clip, snr_db)
    if target == "class":
        labels = [display_label(l) for l in clip["labels"]]
        return sample["target_value"] if sample["target_value"] in labels else labels[0]
    if target.startswith("metadata."):
        return json.loads(clip["metadata"]).get(target.split(".", 1)[1])
    if target.startswith("fact."):
        grounding = json.loads(sample["validation"] or "{}").get("grounding", {})
        value = clip["facts"].get(target.split(".", 1)[1])
        if value is None or "reference_value" not in grounding:
            return None
        return grounding["more"] if value > grounding["reference_value"] else grounding["less"]
    return None


def _scene_value(sample: dict, clip: dict, snr_db: float) -> str | None:
    """A scene question's answer from the clip's timeline; None when the question is unknown or uncertain."""
    try:
        asked = json.loads(sample["asked_value"] or "[]")
        form = form_of(sample["target"], asked)
    except ValueError:
        return None
    if not isinstance(asked, list):
        return None
    return answer_for(form, [str(a) for a in asked], _timeline(clip.get("events") or "[]"), snr_db)


_YES_NO_TARGETS = frozenset(TARGET_OF_FORM[form] for form in YES_NO_FORMS)


def _is_yes_no(sample: dict) -> bool:
    return sample["question_type"] == "yes_no" or sample["target"] in _YES_NO_TARGETS


def check_answer(sample: dict, clip: dict, snr_db: float = DEFAULT_TARGET_SNR_DB) -> list[str]:
    """Answer, options, response and summary agree with the ground truth and with each other."""
    reasons: list[str] = []
    qtype, answer, options = sample["question_type"], sample["answer"], sample["options"]
    scene = sample["target"].startswith("scene.")
    expected = _expected_value(sample, clip, snr_db)
    if expected is None or _norm(expected) != _norm(sample["target_value"]):
        reasons.append("ground_truth_mismatch")
    truth = sample["target_value"]
    response, summary = sample["response"], sample["summary"]
    if qtype == "multiple_choice" or (scene and options):
        if len({_norm(o) for o in options}) != len(options) or len(options) < 2:
            reasons.append("options_not_distinct")
        if sample["target"] == "class":
            true_labels = {_norm(display_label(l)) for l in clip["labels"]}
            if sum(_norm(o) in true_labels for o in options) != 1:
                reasons.append("options_ambiguous")
        letters = [option_letter(i) for i in range(len(options))]
        if answer not in letters or _norm(options[letters.index(answer)]) != _norm(truth):
            reasons.append("answer_mismatch")
        if final_letter(response) != answer:
            reasons.append("response_mismatch")
        wrong = [o for i, o in enumerate(options) if option_letter(i) != answer]
        names_answer = bool(re.search(rf"\b{answer}\b", summary)) or _contains(summary, truth)
        if not names_answer or any(_contains(summary, o) and not _contains(truth, o) for o in wrong):
            reasons.append("summary_disagrees")
    elif _is_yes_no(sample):
        if scene:
            asked_is_true = truth == "yes"
        else:
            asked_is_true = _norm(sample["asked_value"]) in {_norm(display_label(l)) for l in clip["labels"]}
        if answer not in ("yes", "no") or (answer == "yes") != asked_is_true:
            reasons.append("answer_mismatch")
        words = _WORD.findall(response.casefold())
        if not words or words[0] != answer:
            reasons.append("response_mismatch")
        opposite = "no" if answer == "yes" else "yes"
        if not _contains(summary, answer) or _contains(summary, opposite):
            reasons.append("summary_disagrees")
    else:  # open_ended, comparison and open scene questions: a short answer word, number or phrase
        if _norm(answer) != _norm(truth):
            reasons.append("answer_mismatch")
        opposite = ""
        if qtype == "comparison":
            grounding = json.loads(sample["validation"] or "{}").get("grounding", {})
            opposite = grounding.get("less") if answer == grounding.get("more") else grounding.get("more", "")
        if not _contains(response, truth) or (opposite and _contains(response, opposite)):
            reasons.append("response_mismatch")
        if not _contains(summary, truth) or (opposite and _contains(summary, opposite)):
            reasons.append("summary_disagrees")
    return reasons


def check_format(sample: dict, cfg: RunConfig) -> list[str]:
    stages, problems = parse_assistant_text(sample["assistant_text"])
    reasons = list(problems)
    if not problems and any(stages[s] != sample[s].strip() for s in COT_STAGES):
        reasons.append("assistant_text_mismatch")
    for stage in COT_STAGES:
        # The response of a multiple-choice or yes/no answer may be one word; the rest must say something.
        minimum = 1 if stage == "response" else cfg.validate_.min_stage_chars
        if len(sample[stage].strip()) < minimum:
            reasons.append("stage_too_short")
        if len(sample[stage]) > cfg.validate_.max_stage_chars:
            reasons.append("stage_too_long")
    return reasons


def leak_terms(clip: dict) -> list[str]:
    """Strings no question or CoT stage may contain: file names, ids and the split group's value."""
    path = PurePath(clip["source_path"])
    labels = {_norm(display_label(l)) for l in clip["labels"]}
    terms = [path.name, clip["clip_id"], clip["source_id"] if clip["source_id"] != clip["source_path"] else ""]
    if len(path.stem) >= 6 and _norm(path.stem) not in labels:
        terms.append(path.stem)
    group_value = clip["group_id"].split(":", 1)[1] if ":" in clip["group_id"] else clip["group_id"]
    if _norm(group_value) not in labels:
        terms.append(group_value)
    for event in events_from_json(clip.get("events") or "[]"):  # a scene's sources are files with ids too
        terms += [PurePath(event.source_path).name, event.clip_id,
                  event.source_id if event.source_id != event.source_path else ""]
    return list(dict.fromkeys(t for t in terms if t and len(t) >= 3))


def _mentions(text: str, lowered: str, term: str) -> bool:
    """Whether `text` names `term`: plain words only as whole words, ids and file names anywhere.

    The substring test comes first because almost every sample passes it, and it is far cheaper than a regex.
    """
    needle = term.casefold()
    if needle not in lowered:
        return False
    if not needle.replace(" ", "").isalpha():
        return True
    return _phrase_pattern(needle).search(lowered) is not None


def check_leakage(sample: dict, clip: dict, cfg: RunConfig, cache: dict | None = None) -> list[str]:
    reasons: list[str] = []
    joined = " \n ".join([sample["question"], *(sample[s] for s in COT_STAGES)])
    lowered = joined.casefold()
    if any(_mentions(joined, lowered, word) for word in cfg.validate_.forbidden_words):
        reasons.append("leak_forbidden_word")
    if cache is None:
        terms = leak_terms(clip)
    elif (terms := cache.get(clip["clip_id"])) is None:  # once per clip, not per sample
        terms = cache[clip["clip_id"]] = leak_terms(clip)
    if any(_mentions(joined, lowered, term) for term in [sample["sample_id"], *terms]):
        reasons.append("leak_source_id")
    if sample["question_type"] in ("multiple_choice", "open_ended") and _contains(sample["question"], sample["target_value"]):
        reasons.append("leak_answer_in_question")
    return reasons


@lru_cache(maxsize=1024)
def _timeline(events_json: str) -> list:
    """A clip's events, parsed once for all its samples."""
    return events_from_json(events_json)


def check_claims(sample: dict, clip: dict, cache: dict[str, ClipClaims] | None = None) -> tuple[list[str], list[str]]:
    """Numbers in CAPTION and REASONING against the clip's facts, and a scene's CoT against its timeline.

    `cache` (clip id -> `ClipClaims`, one per batch) keeps what a clip's samples share: its references,
    its timeline's counts and order, and the verdicts on the phrases and numbers its samples repeat.
    Returns (reason codes, the contradictions found, for the reject message).
    """
    checker = cache.get(clip["clip_id"]) if cache is not None else None
    if checker is None:
        checker = ClipClaims(clip["facts"], _timeline(clip.get("events") or "[]"))
        if cache is not None:
            cache[clip["clip_id"]] = checker
    if checker.timeline is not None:
        text: Reading | list[str] = read(sample["caption"] + "\n" + sample["reasoning"])  # one reading, both checks
    else:
        text = [sample["caption"], sample["reasoning"]]  # each field read on its own, piece by piece
    grounding = json.loads(sample["validation"] or "{}").get("grounding") if "grounding" in sample["validation"] else None
    options_s = []
    if sample["target"] == "scene.onset":
        options_s = [float(o) for o in sample["options"] if o.replace(".", "", 1).isdigit()]
    reasons, details = [], []
    found = checker.fact_contradictions(text, grounding, options_s)
    if found:
        reasons.append("cot_contradicts_facts")
        details += found
    if checker.timeline is not None:
        asked = json.loads(sample["asked_value"] or "[]") if sample["target"].startswith("scene.") else []
        found = checker.timeline_contradictions(text, asked, options_s)
        if found:
            reasons.append("cot_contradicts_timeline")
            details += found
    return reasons, details


def check_text(sample: dict, cfg: RunConfig) -> list[str]:
    """Every text field is in normal form (no hidden characters, no mixed-script word); options within
    `expand.n_options`."""
    # One pass over all the fields joined by line feeds (allowed text), since most samples are plain ASCII.
    joined = "\n".join([sample["question"], sample["answer"], *sample["options"], *(sample[s] for s in COT_STAGES)])
    reasons = [problem.code for problem in text_problems(joined)]
    if len(sample["options"]) > cfg.expand.n_options:
        reasons.append("too_many_options")
    return list(dict.fromkeys(reasons))


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


_SAMPLE_LIST = TypeAdapter(list[Sample])


def _schema_errors(samples: list[dict]) -> list[str]:
    """Per sample, its schema errors ('' when valid). One batch call first: checking row by row is slower."""
    try:
        _SAMPLE_LIST.validate_python(samples)
        return [""] * len(samples)
    except ValidationError:
        errors = []
        for sample in samples:
            try:
                Sample.model_validate(sample)
                errors.append("")
            except ValidationError as exc:
                errors.append("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
        return errors


def validate_samples(samples: list[dict], clips: dict[str, dict], cfg: RunConfig) -> tuple[list[dict], list[Rejection]]:
    """Run every check over one batch's samples; return the passing ones (with `validation` filled) and rejects."""
    passed: list[dict] = []
    rejects: list[Rejection] = []
    seen_questions: dict[str, list[set[str]]] = {}
    leak_cache: dict[str, list[str]] = {}
    claim_cache: dict[str, ClipClaims] = {}
    snr_db = target_snr_db(cfg)
    for sample, schema_error in zip(samples, _schema_errors(samples)):
        clip = clips.get(sample["clip_id"])
        reasons: list[str] = []
        if schema_error:
            reasons, detail = ["schema_invalid"], schema_error
        elif clip is None:
            reasons, detail = ["ground_truth_mismatch"], "its clip is not among the batch's ingested clips"
        else:
            reasons = check_format(sample, cfg) + check_answer(sample, clip, snr_db) + check_leakage(sample, clip, cfg, leak_cache)
            reasons += check_text(sample, cfg)
            claim_reasons, claims = check_claims(sample, clip, claim_cache)
            reasons += claim_reasons
            tokens = set(_WORD.findall(render_user_text(sample["question"], sample["options"]).casefold()))
            earlier = seen_questions.setdefault(sample["clip_id"], [])
            if any(_jaccard(tokens, other) >= cfg.validate_.near_duplicate_jaccard for other in earlier):
                reasons.append("near_duplicate_question")
            elif not reasons:
                earlier.append(tokens)
            detail = ", ".join(dict.fromkeys(reasons)) + (f" ({'; '.join(claims[:3])})" if claims else "")
        if reasons:
            unique = list(dict.fromkeys(reasons))
            where = clip["manifest_row"] if clip else sample.get("source_path", "")
            rejects.append(Rejection(
                stage=STAGE, reason=unique[0], reasons=unique, clip_id=sample["clip_id"],
                sample_id=sample["sample_id"], manifest_row=clip["manifest_row"] if clip else "",
                source_path=sample.get("source_path", ""), raw=sample.get("assistant_text", ""),
                message=f"{where}: sample {sample['sample_id']} ({sample['question_type']}) failed: {detail}"))
            continue
        validation = json.loads(sample["validation"] or "{}")
        flags = []
        if clip["facts"]["clipping_ratio"] > 0.01:
            flags.append("clipping")
        if clip["facts"]["loudness_dbfs"] < -45:
            flags.append("very_quiet")
        validation.update(passed=True, checks=list(CHECKS), flags=flags)
        passed.append({**sample, "validation": json_dumps(validation)})
    return passed, rejects


def judge_samples(samples: list[dict], captions: dict[str, str], clips: dict[str, dict], cfg: RunConfig,
                  teacher: Teacher) -> tuple[list[dict], list[Rejection]]:
    """The optional LLM judge: keep samples whose reasoning it scores at least `validate.judge_min_score`."""
    requests = []
    for s in samples:
        answer = s["answer"]
        if s["options"] and answer in [option_letter(i) for i in range(len(s["options"]))]:
            answer = f"{answer}. {s['options'][ord(answer) - ord('A')]}"
        requests.append(JudgeRequest(sample_id=s["sample_id"], question=render_user_text(s["question"], s["options"]),
                                     answer=answer, caption=captions.get(s["clip_id"], s["caption"]),
                                     reasoning=s["reasoning"], summary=s["summary"], response=s["response"],
                                     seed=cfg.run.seed))
    kept: list[dict] = []
    rejects: list[Rejection] = []
    for sample, verdict in zip(samples, teacher.judge(requests)):
        clip = clips[sample["clip_id"]]
        if isinstance(verdict, TeacherFailure):
            reason, message, raw = verdict.reason, f"the judge failed: {verdict.message}", verdict.raw
        elif not verdict.supports_answer or verdict.score < cfg.validate_.judge_min_score:
            reason, raw = "judge_unsupported", sample["assistant_text"]
            message = f"the judge scored {verdict.score}/5 (supports answer: {verdict.supports_answer}): {verdict.explanation}"
        else:
            validation = json.loads(sample["validation"])
            validation["judge"] = {"score": verdict.score, "explanation": verdict.explanation}
            kept.append({**sample, "validation": json_dumps(validation)})
            continue
        rejects.append(Rejection(stage=STAGE, reason=reason, reasons=[reason], clip_id=sample["clip_id"],
                                 sample_id=sample["sample_id"], manifest_row=clip["manifest_row"],
                                 source_path=sample["source_path"], raw=raw,
                                 message=f"{clip['manifest_row']}: sample {sample['sample_id']}: {message}"))
    return kept, rejects


def batch_fingerprint(run: RunDir, cfg: RunConfig, batch: int) -> str:
    """What `validate/part-<batch>` must be made from; a part that stores another fingerprint is redone."""
    judge = [teacher_fingerprint(cfg, STAGE), run.part_fingerprint("caption", batch)] if cfg.validate_.judge else []
    return fingerprint(STAGE, STAGE_VERSION, cfg.section_hash("validate"), run.part_fingerprint("expand", batch),
                       target_snr_db(cfg), *judge)


def validate_batch(run: RunDir, cfg: RunConfig, batch: int) -> StageReport:
    """Validate one batch into `validate/part-<batch>.parquet`; skip it if already done."""
    started = time.perf_counter()
    fp = batch_fingerprint(run, cfg, batch)
    if run.part_fingerprint(STAGE, batch) == fp:
        report = run.stored_report(STAGE, batch)
        progress.advance(STAGE, report.rows_in)
        return report
    teacher = build_teacher(cfg, STAGE) if cfg.validate_.judge else None
    stats = load_run_stats(run)
    clips = {c["clip_id"]: c for c in read_clips(run, batch, stats).to_pylist()}
    table = run.read_part("expand", batch)
    samples = table.to_pylist()
    passed, rejects = validate_samples(samples, clips, cfg)
    # Keep the passing rows column-wise (cheaper than rebuilding the table from dicts); only `validation` changes.
    passed_ids = {row["sample_id"] for row in passed}
    kept = table.filter(pa.array([s["sample_id"] in passed_ids for s in samples], pa.bool_()))
    kept = kept.set_column(kept.schema.get_field_index("validation"), "validation",
                           pa.array([row["validation"] for row in passed], pa.string()))
    if teacher is not None:
        captions = dict(zip(*(run.read_part("caption", batch, ["clip_id", "text"])[c].to_pylist()
                              for c in ("clip_id", "text"))))
        passed, judged = judge_samples(passed, captions, clips, cfg, teacher)
        rejects += judged
    progress.advance(STAGE, len(samples))
    rejected = count_reasons(rejects)
    report = StageReport(stage=STAGE, rows_in=len(samples), rows_out=len(passed), rejected=rejected, parts_done=1,
                         seconds=time.perf_counter() - started)
    if teacher is not None:
        report.teacher = teacher.usage
    run.write_part(STAGE, batch, kept.cast(SAMPLE_SCHEMA), fp, rejects, report)
    return report


def run_validate(run: RunDir, cfg: RunConfig) -> StageReport:
    return merge_reports(STAGE, [validate_batch(run, cfg, b) for b in range(run.batch_count())])
