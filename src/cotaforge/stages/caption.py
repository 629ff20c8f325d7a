"""caption: one detailed caption per clip.

Inputs: `ingest/part-N`. Output: `caption/part-N.parquet` (Caption rows). Mode `facts` writes the caption
from the clip's class, its grounding metadata and its measured acoustic facts, with no LLM (a scene's, or a
timed recording's, from its timeline: each sound in order with its times, then the measured facts); the LLM modes
(`text_llm`, `audio_llm`) go through a teacher backend. Failure modes: none per row in `facts` mode.
"""

from __future__ import annotations

import json
import random
import re
import time

import pyarrow as pa

from cotaforge import progress
from cotaforge.config import RunConfig, stable_hash
from cotaforge.describe import display_label, fact_phrases, timeline_phrase
from cotaforge.models import Rejection, StageReport, TeacherUsage, count_reasons, merge_reports
from cotaforge.prompts import load_bank, prompt_fingerprint
from cotaforge.scenes import events_from_json
from cotaforge.stages.ingest import load_run_stats, read_clips
from cotaforge.store import CAPTION_SCHEMA, RunDir, fingerprint
from cotaforge.teacher.base import CaptionRequest, Teacher, TeacherFailure
from cotaforge.teacher.build import build_teacher, teacher_fingerprint

STAGE = "caption"
STAGE_VERSION = 2  # 2: scenes are captioned by their timeline
CAPTION_PLACEHOLDERS = frozenset({
    "duration", "duration_adj", "duration_cap", "duration_word", "loudness", "loudness_word", "peak", "centroid",
    "brightness_word", "pitch_phrase", "texture_phrase", "onsets_phrase", "answer_text",
})


# Columns that name a person, a file or a record identify a clip rather than describe it: never asked about.
IDENTITY_FIELD = re.compile(
    r"(^|[_\s-])(id|ids|uuid|key|group|speaker|speakers|spk|user|client|person|name|file|filename|path|session|"
    r"utt|utterance|source)([_\s-]|$)", re.IGNORECASE)


def grounding_fields(stats: dict, cfg: RunConfig) -> dict[str, list[str]]:
    """Per source dataset, the metadata fields questions and captions may speak of.

    'auto' keeps categorical fields (2 to 20 values, every value a safe plain phrase, none a file name)
    that are not the split group, not an identity (a speaker's name is an id, not a fact; so are file, path,
    session and id columns) and not a rename of the class.
    """
    from cotaforge.stages.ingest import label_problem

    chosen: dict[str, list[str]] = {}
    for dataset, fields in stats["metadata_values"].items():
        keep = []
        for name, values in sorted(fields.items()):
            if cfg.expand.metadata_fields != "auto":
                if name in cfg.expand.metadata_fields:
                    keep.append(name)
                continue
            if name == cfg.inputs.group_by or IDENTITY_FIELD.search(name) or not 2 <= len(values) <= 20:
                continue
            if any(label_problem(v, cfg) or v.lower().endswith((".wav", ".flac", ".ogg", ".mp3")) for v in values):
                continue
            if name in stats["class_renames"].get(dataset, []):
                continue
            keep.append(name)
        chosen[dataset] = keep
    return chosen


def facts_caption(clip: dict, fields: list[str], seed: int, bank_stem: str) -> str:
    bank = load_bank(bank_stem, CAPTION_PLACEHOLDERS)
    rng = random.Random(stable_hash([seed, clip["clip_id"], bank_stem]))
    values = fact_phrases(clip["facts"])
    values["answer_text"] = " and ".join(f'"{display_label(label)}"' for label in clip["labels"])
    pick = lambda key: rng.choice(bank[key]).format_map(values)  # noqa: E731 - local shorthand
    events = events_from_json(clip.get("events") or "[]")
    if events:  # a scene or a timed recording: its sounds in order, not one class
        text = (f"{timeline_phrase(events, clip['facts']['duration_s'])}. The whole recording is {pick('level')}, "
                f"{pick('character')}. {pick('detail')}")
    else:
        text = f"{pick('content')}, {pick('level')}, {pick('character')}. {pick('detail')}"
    metadata = json.loads(clip["metadata"])
    facts = [f"its {name.replace('_', ' ')} is {metadata[name]}" for name in fields if metadata.get(name)]
    if facts:
        text += " " + "; ".join(facts)[:1].upper() + "; ".join(facts)[1:] + "."
    return text


def batch_fingerprint(run: RunDir, cfg: RunConfig, batch: int) -> str:
    """What `caption/part-<batch>` must be made from; a part that stores another fingerprint is redone."""
    stats = load_run_stats(run)
    # The batch's clips are its ingested clips plus the scenes compose built for it.
    upstream = [run.part_fingerprint("ingest", batch), run.part_fingerprint("compose", batch)]
    teacher = [teacher_fingerprint(cfg, STAGE)] if cfg.caption.mode != "facts" else []
    return fingerprint(STAGE, STAGE_VERSION, cfg.section_hash("caption"), cfg.run.seed, upstream,
                       prompt_fingerprint([caption_prompt(cfg)]),
                       stable_hash([grounding_fields(stats, cfg), stats["duplicate_rows"]]), *teacher)


def caption_batch(run: RunDir, cfg: RunConfig, batch: int) -> StageReport:
    """Caption one batch of clips into `caption/part-<batch>.parquet`; skip it if already done."""
    started = time.perf_counter()
    mode = cfg.caption.mode
    fp = batch_fingerprint(run, cfg, batch)
    if run.part_fingerprint(STAGE, batch) == fp:
        report = run.stored_report(STAGE, batch)
        progress.advance(STAGE, report.rows_in)
        return report
    stats = load_run_stats(run)
    fields = grounding_fields(stats, cfg)
    teacher = build_teacher(cfg, STAGE) if mode != "facts" else None
    clips = read_clips(run, batch, stats, with_audio=mode == "audio_llm").to_pylist()
    if teacher is None:
        rows = [{"clip_id": clip["clip_id"], "mode": "facts", "prompt_version": cfg.caption.prompt,
                 "text": facts_caption(clip, fields.get(clip["source_dataset"], []), cfg.run.seed, cfg.caption.prompt)}
                for clip in clips]
        rejects: list[Rejection] = []
    else:
        rows, rejects = llm_captions(clips, fields, cfg, teacher)
    progress.advance(STAGE, len(clips))
    rejected = count_reasons(rejects)
    report = StageReport(stage=STAGE, rows_in=len(clips), rows_out=len(rows), rejected=rejected, parts_done=1,
                         seconds=time.perf_counter() - started, teacher=teacher.usage if teacher else TeacherUsage())
    run.write_part(STAGE, batch, pa.Table.from_pylist(rows, schema=CAPTION_SCHEMA), fp, rejects, report)
    return report


def caption_prompt(cfg: RunConfig) -> str:
    """The prompt file stem of the configured caption mode."""
    c = cfg.caption
    return {"facts": c.prompt, "text_llm": c.text_prompt, "audio_llm": c.audio_prompt}[c.mode]


def llm_captions(clips: list[dict], fields: dict[str, list[str]], cfg: RunConfig,
                 teacher: Teacher) -> tuple[list[dict], list[Rejection]]:
    """Captions written by the teacher (text_llm: from class, metadata and facts; audio_llm: hearing the clip).

    The class names go in as hints either way; a clip whose caption fails becomes a reject row.
    """
    requests = []
    for clip in clips:
        metadata = json.loads(clip["metadata"])
        requests.append(CaptionRequest(
            clip_id=clip["clip_id"], labels=[display_label(l) for l in clip["labels"]],
            metadata={f: metadata[f] for f in fields.get(clip["source_dataset"], []) if metadata.get(f)},
            facts=clip["facts"], audio_wav=clip.get("audio_wav") if cfg.caption.mode == "audio_llm" else None,
            seed=cfg.run.seed))
    rows, rejects = [], []
    for clip, result in zip(clips, teacher.write_captions(requests)):
        if isinstance(result, TeacherFailure):
            rejects.append(Rejection(stage=STAGE, reason=result.reason, reasons=[result.reason], raw=result.raw,
                                     message=f"{clip['manifest_row']}: {result.message}",
                                     manifest_row=clip["manifest_row"], source_path=clip["source_path"],
                                     clip_id=clip["clip_id"]))
        else:
            rows.append({"clip_id": clip["clip_id"], "mode": cfg.caption.mode, "prompt_version": caption_prompt(cfg),
                         "text": result.caption.strip()})
    return rows, rejects


def run_caption(run: RunDir, cfg: RunConfig) -> StageReport:
    return merge_reports(STAGE, [caption_batch(run, cfg, b) for b in range(run.batch_count())])
