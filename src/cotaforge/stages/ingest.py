"""ingest: manifest rows -> decoded 16 kHz clips with content ids and acoustic facts.

Inputs: the run's manifests. Outputs: `ingest/part-NNNNN.parquet` (clip rows with the 16 kHz WAV bytes),
`ingest/index.parquet` and `ingest/run_stats.json` (classes, metadata values, fact medians, duplicates).
Failure modes, each a reject row naming the manifest row and file: path_missing, label_missing,
label_markup, label_not_a_class_name, segment_invalid, segment_out_of_range, event_invalid,
event_out_of_range, file_missing, file_empty, file_truncated, decode_failed, silent, too_short, too_long,
duplicate. Stereo, float and odd sample rates are converted, not rejected.
A row with a window (`start_s`/`end_s`) decodes only that window of its file. A recording with timestamped
events becomes one clip with scene_kind "recording" and its `events` timeline (levels measured here).
"""

from __future__ import annotations

import functools
import json
import math
import re
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cotaforge import progress
from cotaforge.audio import (SEGMENT_END_TOLERANCE_S, AudioDecodeError, DecodedAudio, acoustic_facts, content_hash,
                             decode_audio, rms_dbfs, to_pcm16, wav_bytes)
from cotaforge.config import RunConfig, stable_hash
from cotaforge.describe import display_label
from cotaforge.manifest import ManifestRow, read_inputs, rows_to_frame, table_to_rows
from cotaforge.models import SAMPLE_RATE_HZ, Rejection, StageReport, merge_reports, count_reasons
from cotaforge.scenes import Event, events_to_json
from cotaforge.location import location
from cotaforge.store import (CLIP_SCHEMA, RunDir, fingerprint, json_dumps, read_metadata, read_schema, read_table,
                             write_rejects, write_table_atomic, write_text_atomic)

STAGE = "ingest"
STAGE_VERSION = 2  # bump when the code changes what a part holds
MAX_METADATA_VALUES = 50

_MARKUP = re.compile(r"[<>{}`\\]|&[a-z#0-9]+;|\b(?:javascript|data):", re.IGNORECASE)
# Phrases of prompt injection; a short label that holds one is an instruction, not a class name.
_INSTRUCTION = re.compile(
    r"\b(?:ignore|disregard|forget|override)\b.*\b(?:previous|prior|above|earlier|instructions?|prompts?|rules)\b"
    r"|\bsystem prompt\b|\byou are\b|\bthe answer is\b|\brespond with\b",
    re.IGNORECASE,
)
_CLASS_NAME = re.compile(r"[\w][\w .,'()/+-]*", re.UNICODE)


def label_problem(label: str, cfg: RunConfig) -> tuple[str, str] | None:
    """Why a label cannot be used as a class name, or None. Labels are data, never instructions or markup."""
    if _MARKUP.search(label):
        return "label_markup", f"label {label!r} contains markup characters; labels must be plain class names"
    words = label.replace("_", " ").split()
    if (len(label) > cfg.ingest.max_label_chars or len(words) > cfg.ingest.max_label_words
            or not _CLASS_NAME.fullmatch(label) or _INSTRUCTION.search(label.replace("_", " "))):
        return "label_not_a_class_name", (
            f"label {label!r} does not look like a class name (at most {cfg.ingest.max_label_words} words and "
            f"{cfg.ingest.max_label_chars} characters, no sentences or instructions); fix the manifest row")
    return None


def prepare_ingest(cfg: RunConfig) -> RunDir:
    """Read the manifests, save the combined manifest and the resolved config in the run directory."""
    run = RunDir.for_config(cfg)
    read = read_inputs(cfg.inputs)
    rows = read.rows
    batches = math.ceil(len(rows) / cfg.run.batch_size)
    frame = rows_to_frame(rows)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    # What reading decided travels with the manifest: the run report's notes, and the provenance columns
    # (folds, source ids, windows) that run_stats leaves out so no question asks about them.
    write_table_atomic(table, run.manifest_path, {b"cotaforge.batches": str(batches).encode(),
                                                  b"cotaforge.notes": json.dumps(read.notes).encode(),
                                                  b"cotaforge.provenance": json.dumps(read.provenance).encode()})
    import yaml

    write_text_atomic(run.root / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True))
    write_text_atomic(run.root / "config.sha256", stable_hash(cfg.to_dict(), length=64) + "\n")
    return run


def _batch_rows(run: RunDir, cfg: RunConfig, batch: int) -> list[ManifestRow]:
    start = batch * cfg.run.batch_size
    table = _manifest_table(str(run.manifest_path), tuple(_file_stamp(str(run.manifest_path))))
    rows = table.filter(pc.and_(pc.greater_equal(table["row_index"], start),
                                pc.less(table["row_index"], start + cfg.run.batch_size)))
    return table_to_rows(rows)


@functools.lru_cache(maxsize=1)
def _manifest_table(path: str, stamp: tuple[int, ...]) -> pa.Table:
    """The run's manifest, read once per process while its file is unchanged (`stamp`: size, mtime): the file is
    one row group, so every batch reading it anew cost a read of the whole manifest, a cost that grew with
    the run (0.12 s a batch at 12,000 rows, ten times as much at 120,000)."""
    return read_table(location(path))


def _file_stamp(path: str) -> list[int]:
    try:
        stat = location(path).stat()
        return [stat.st_size, stat.st_mtime_ns]
    except OSError:
        return [-1, -1]


def rows_fingerprint(cfg: RunConfig, rows: list[ManifestRow]) -> str:
    # The files' size and mtime are included so a replaced recording is ingested again.
    content = [(r.__dict__, _file_stamp(r.resolved_path)) for r in rows]
    return fingerprint(STAGE, STAGE_VERSION, cfg.section_hash("ingest", "inputs"), stable_hash(content))


def batch_fingerprint(run: RunDir, cfg: RunConfig, batch: int) -> str:
    """What `ingest/part-<batch>` must be made from (its manifest rows, their files' size and time); a part
    that stores another fingerprint is redone."""
    return rows_fingerprint(cfg, _batch_rows(run, cfg, batch))


def _reject(row: ManifestRow, reason: str, message: str, clip_id: str = "") -> Rejection:
    return Rejection(stage=STAGE, reason=reason, reasons=[reason], message=f"{row.manifest_row}: {message}",
                     manifest_row=row.manifest_row, source_path=row.source_path, clip_id=clip_id)


def _ingest_row(row: ManifestRow, cfg: RunConfig) -> dict | Rejection:
    if row.error:
        return _reject(row, row.error, row.error_message)
    for label in row.labels:
        problem = label_problem(label, cfg)
        if problem:
            return _reject(row, *problem)
    try:
        decoded = _decode(row)
    except AudioDecodeError as exc:
        return _reject(row, exc.reason, str(exc))
    duration_s = len(decoded.samples) / 16_000
    if duration_s < cfg.ingest.min_duration_s:
        return _reject(row, "too_short", f"{row.source_path} lasts {duration_s:.3f} s, under ingest.min_duration_s="
                                         f"{cfg.ingest.min_duration_s}; lower the bound or drop the clip")
    if duration_s > cfg.ingest.max_duration_s:
        return _reject(row, "too_long", f"{row.source_path} lasts {duration_s:.1f} s, over ingest.max_duration_s="
                                        f"{cfg.ingest.max_duration_s}; split it or raise the bound")
    pcm16 = to_pcm16(decoded.samples)
    peak = float(np.max(np.abs(decoded.samples)))
    if peak <= 10 ** (cfg.ingest.silence_peak_dbfs / 20):
        return _reject(row, "silent", f"{row.source_path} is digital silence (peak below "
                                      f"{cfg.ingest.silence_peak_dbfs} dBFS); check the recording")
    facts = acoustic_facts(decoded.samples, decoded.clipping_ratio)
    clip_id = content_hash(pcm16)
    group = f"{row.source_dataset}:{row.group}" if row.group else clip_id
    events = "[]"
    if row.events:
        late = [e for e in row.events if e["offset_s"] > duration_s + SEGMENT_END_TOLERANCE_S]
        if late:
            return _reject(row, "event_out_of_range", f"{row.source_path} lasts {duration_s:.3f} s but an event of "
                                                      f"{late[0]['label']!r} ends at {late[0]['offset_s']:g} s; "
                                                      "fix the annotation or the file")
        events = events_to_json(_recording_events(row, decoded.samples, clip_id))
    return {
        "clip_id": clip_id, "group_id": group, "source_dataset": row.source_dataset,
        "source_path": row.source_path, "source_id": row.source_id, "manifest_row": row.manifest_row,
        "labels": row.labels, "class_label": row.labels[0], "metadata": json_dumps(row.metadata),
        "original_sample_rate_hz": decoded.original_sample_rate_hz, "original_channels": decoded.original_channels,
        "sample_rate_hz": 16_000, "facts": facts.model_dump(), "scene_kind": "recording" if row.events else "",
        "events": events, "twin_of_clip": "", "twin_change": "", "row_index": row.row_index,
        "audio_wav": wav_bytes(pcm16),
    }


def _decode(row: ManifestRow) -> DecodedAudio:
    """The row's audio: its file (or its window of the file), or its bytes inside a dataset shard."""
    if row.table_row >= 0:
        from cotaforge.hf_input import read_audio_cell

        data, inner_path = read_audio_cell(location(row.resolved_path), row.table_row, row.audio_column)
        if data is None:
            return decode_audio(location(inner_path), row.start_s, row.end_s)
        return decode_audio(location(f"{row.resolved_path}[{row.table_row}]"), row.start_s, row.end_s, data=data)
    return decode_audio(location(row.resolved_path), row.start_s, row.end_s)


def _recording_events(row: ManifestRow, samples: np.ndarray, clip_id: str) -> list[Event]:
    """The annotated events as a timeline: each one's level is the RMS of the recording over its span."""
    events = []
    for event in row.events:
        first = int(round(event["onset_s"] * SAMPLE_RATE_HZ))
        last = min(len(samples), int(round(event["offset_s"] * SAMPLE_RATE_HZ)))
        events.append(Event(class_label=display_label(event["label"]), source_path=row.source_path,
                            source_id=row.source_id, clip_id=clip_id, onset_s=event["onset_s"],
                            offset_s=min(event["offset_s"], len(samples) / SAMPLE_RATE_HZ), gain_db=0.0,
                            level_dbfs=rms_dbfs(samples[first:max(last, first + 1)])))
    return events


def ingest_batch(run: RunDir, cfg: RunConfig, batch: int) -> StageReport:
    """Decode one batch of manifest rows into `ingest/part-<batch>.parquet`; skip it if already done."""
    started = time.perf_counter()
    rows = _batch_rows(run, cfg, batch)
    fp = rows_fingerprint(cfg, rows)
    if run.part_fingerprint(STAGE, batch) == fp:
        progress.advance(STAGE, len(rows))
        return run.stored_report(STAGE, batch)
    clips: list[dict] = []
    rejects: list[Rejection] = []
    seen: dict[str, str] = {}
    for row in rows:
        result = _ingest_row(row, cfg)
        if isinstance(result, Rejection):
            rejects.append(result)
        elif result["clip_id"] in seen:
            rejects.append(_reject(row, "duplicate", f"{row.source_path} has the same audio as "
                                                     f"{seen[result['clip_id']]}; kept the first", result["clip_id"]))
        else:
            seen[result["clip_id"]] = result["manifest_row"]
            clips.append(result)
        progress.advance(STAGE, 1)
    report = _report(len(rows), len(clips), rejects, started)
    run.write_part(STAGE, batch, pa.Table.from_pylist(clips, schema=CLIP_SCHEMA), fp, rejects, report)
    return report


def _report(rows_in: int, rows_out: int, rejects: list[Rejection], started: float) -> StageReport:
    rejected = count_reasons(rejects)
    return StageReport(stage=STAGE, rows_in=rows_in, rows_out=rows_out, rejected=rejected, parts_done=1,
                       seconds=time.perf_counter() - started)


def finalize_ingest(run: RunDir, cfg: RunConfig) -> StageReport:
    """Remove duplicates across batches and write the run-level statistics later stages ground on; when no part
    and no manifest note changed since the last time, the files it wrote stand and its report is returned."""
    manifest_metadata = read_schema(run.manifest_path).metadata or {}
    parts = [run.part_fingerprint(STAGE, batch) for batch in range(run.batch_count())]
    fp = fingerprint(STAGE, "finalize", STAGE_VERSION, parts, manifest_metadata.get(b"cotaforge.notes", b"").decode(),
                     manifest_metadata.get(b"cotaforge.provenance", b"").decode())
    done_path = run.stage_dir(STAGE) / "finalize.json"
    if (done_path.exists() and (run.stage_dir(STAGE) / "run_stats.json").exists()
            and run.rejects_path(STAGE, "duplicates").exists()):
        done = json.loads(done_path.read_text(encoding="utf-8"))
        if done.get("fingerprint") == fp:
            return StageReport.model_validate(done["report"])
    report = _deduplicate_and_count(run, manifest_metadata)
    write_text_atomic(done_path, json.dumps({"fingerprint": fp, "report": report.model_dump(mode="json")}))
    return report


def _deduplicate_and_count(run: RunDir, manifest_metadata: dict[bytes, bytes]) -> StageReport:
    columns = ["clip_id", "row_index", "manifest_row", "source_path", "source_dataset", "labels", "class_label",
               "metadata", "group_id", "facts"]
    tables = [run.read_part(STAGE, b, columns) for b in range(run.batch_count())]
    index = pa.concat_tables(tables).sort_by("row_index") if tables else pa.table({c: [] for c in columns})
    first_row: dict[str, tuple[int, str]] = {}
    duplicates: list[Rejection] = []
    duplicate_rows: list[int] = []
    for clip_id, row_index, manifest_row, source_path in zip(*(index[c].to_pylist() for c in
                                                               ("clip_id", "row_index", "manifest_row", "source_path"))):
        if clip_id in first_row:
            duplicate_rows.append(row_index)
            duplicates.append(Rejection(stage=STAGE, reason="duplicate", reasons=["duplicate"], clip_id=clip_id,
                                        manifest_row=manifest_row, source_path=source_path,
                                        message=f"{manifest_row}: same audio as {first_row[clip_id][1]}; kept the first"))
        else:
            first_row[clip_id] = (row_index, manifest_row)
    write_rejects(run.rejects_path(STAGE, "duplicates"), duplicates)
    kept = index.filter(pc.invert(pc.is_in(index["row_index"], pa.array(duplicate_rows, pa.int64()))))
    provenance = json.loads(manifest_metadata.get(b"cotaforge.provenance", b"{}"))
    stats = _run_stats(kept, duplicate_rows, provenance)
    write_text_atomic(run.stage_dir(STAGE) / "run_stats.json", json.dumps(stats, indent=1, sort_keys=True))
    rejected = {"duplicate": len(duplicates)} if duplicates else {}
    notes = json.loads(manifest_metadata.get(b"cotaforge.notes", b"[]"))
    return StageReport(stage=STAGE, rows_in=index.num_rows, rows_out=kept.num_rows, rejected=rejected,
                       notes=notes + [f"{len(stats['classes'])} classes across {len(stats['classes_by_dataset'])} "
                                      "source datasets"])


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.median(present)) if present else None


def _run_stats(index: pa.Table, duplicate_rows: list[int], provenance: dict[str, list[str]]) -> dict:
    """Classes, metadata values and fact medians; provenance columns (folds, source ids, windows) are left
    out of the metadata values so that no question or caption speaks of them."""
    classes_by_dataset: dict[str, set[str]] = {}
    metadata_values: dict[str, dict[str, set[str]]] = {}
    class_pairs: dict[str, dict[str, set[tuple[str, str]]]] = {}  # which values meet which classes
    for dataset, labels, metadata in zip(index["source_dataset"].to_pylist(), index["labels"].to_pylist(),
                                         index["metadata"].to_pylist()):
        classes_by_dataset.setdefault(dataset, set()).update(labels)
        fields = metadata_values.setdefault(dataset, {})
        pairs = class_pairs.setdefault(dataset, {})
        for key, value in json.loads(metadata).items():
            if key in provenance.get(dataset, ()):
                continue
            values = fields.setdefault(key, set())
            if len(values) <= MAX_METADATA_VALUES:
                values.add(value)
                pairs.setdefault(key, set()).add((value, labels[0]))
    facts = index["facts"].to_pylist()
    return {
        "clips": index.num_rows,
        "classes": sorted(set().union(*classes_by_dataset.values())) if classes_by_dataset else [],
        "classes_by_dataset": {d: sorted(c) for d, c in classes_by_dataset.items()},
        # A field with more than MAX_METADATA_VALUES values is listed with MAX+1 of them: too many to ask about.
        "metadata_values": {d: {k: sorted(v) for k, v in f.items()} for d, f in metadata_values.items()},
        # A field whose values pair one-to-one with the classes is the class under another name (digit 7 = seven).
        "class_renames": {d: sorted(k for k, p in f.items()
                                    if len(p) == len(metadata_values[d][k]) == len({c for _, c in p}))
                          for d, f in class_pairs.items()},
        "fact_medians": {name: _median([f[name] for f in facts]) for name in
                         ("duration_s", "loudness_dbfs", "f0_median_hz", "spectral_centroid_hz")},
        "duplicate_rows": sorted(duplicate_rows),
    }


def load_run_stats(run: RunDir) -> dict:
    path = run.stage_dir(STAGE) / "run_stats.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run ingest first")
    return json.loads(path.read_text(encoding="utf-8"))


def read_clips(run: RunDir, batch: int, stats: dict, with_audio: bool = False, with_scenes: bool = True) -> pa.Table:
    """The batch's clips: its ingested clips without the duplicates of earlier batches, then the scenes the
    compose stage built for the batch (when it has run; `with_scenes=False` leaves them out)."""
    columns = [c for c in CLIP_SCHEMA.names if with_audio or c != "audio_wav"]
    table = run.read_part(STAGE, batch, columns)
    if stats["duplicate_rows"]:
        table = table.filter(pc.invert(pc.is_in(table["row_index"], pa.array(stats["duplicate_rows"], pa.int64()))))
    if with_scenes and run.part_path("compose", batch).exists():
        table = pa.concat_tables([table, run.read_part("compose", batch, columns)])
    return table


def clip_count(run: RunDir) -> int:
    """How many clips the stages after compose see: the ingested ones (less duplicates) plus the scenes."""
    scenes = sum(read_metadata(run.part_path("compose", b)).num_rows for b in range(run.batch_count())
                 if run.part_path("compose", b).exists())
    return load_run_stats(run)["clips"] + scenes


def read_clip_audio(run: RunDir, batch: int) -> pa.Table:
    """`clip_id` and `audio_wav` of every clip of the batch, ingested or composed (duplicates included)."""
    columns = ["clip_id", "audio_wav"]
    tables = [run.read_part(stage, batch, columns) for stage in (STAGE, "compose")
              if stage == STAGE or run.part_path(stage, batch).exists()]
    return pa.concat_tables(tables)


def summarize_ingest(batch_reports: list[StageReport], final: StageReport) -> StageReport:
    """One report for the stage: the batches' counts, less the duplicates found across batches."""
    total = merge_reports(STAGE, batch_reports)
    cross_batch = final.rejected.get("duplicate", 0)
    if cross_batch:
        total.rejected["duplicate"] = total.rejected.get("duplicate", 0) + cross_batch
    total.rows_out = final.rows_out
    total.notes.extend(final.notes)
    return total


def run_ingest(cfg: RunConfig) -> tuple[RunDir, StageReport]:
    """The whole stage in this process (the flow maps `ingest_batch` over batches instead)."""
    run = prepare_ingest(cfg)
    reports = [ingest_batch(run, cfg, b) for b in range(run.batch_count())]
    return run, summarize_ingest(reports, finalize_ingest(run, cfg))
