"""Read input manifests (CSV, TSV, JSONL, Parquet, a folder, or a Hugging Face dataset) into one table of rows.

The plain layout: `path` (absolute, or relative to the manifest's folder) and `label` (several separated by
`;` in CSV, or a list in JSONL / Parquet); optional `group` (or the column named by --group-by; a `speaker`
column groups by default), `id`, `start_s`/`end_s` (a window of a longer file) and `onset_s`/`offset_s`
(one row per timestamped event). Every other column is kept as metadata. Any other layout is mapped by column
keys (--path-column, --label-column ...) or a corpus preset (`cotaforge.corpora`).

A manifest may be a URL (`s3://bucket/clips/manifest.csv`, any fsspec protocol): it is read through fsspec,
and its relative audio paths resolve against its URL's folder (`s3://bucket/clips/`), like a local one's.

A manifest that cannot be read or mapped raises InputError before any audio is read, naming the file, the
missing column, the columns that exist and the flag that fixes it. A row with a bad value is kept with an
`error` so ingest rejects that row alone and the rest of the run goes on.
"""

from __future__ import annotations

import json
import math
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from cotaforge.config import ColumnMapping, InputSection, ManifestEntry
from cotaforge.corpora import Preset, corpus_metadata_files, match_preset
from cotaforge.errors import InputError
from cotaforge.location import check_reachable, is_remote, location, open_input, url_protocol

if TYPE_CHECKING:
    import pyarrow as pa

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3")
RESERVED_COLUMNS = ("path", "label", "group", "id")
SEGMENT_COLUMNS = ("start_s", "end_s")
EVENT_COLUMNS = ("onset_s", "offset_s")
AUDIOFOLDER_METADATA = ("metadata.csv", "metadata.jsonl")
ROOT_PROBE_ROWS = 20  # rows whose files are looked up to choose among a preset's candidate audio roots


@dataclass
class ManifestRow:
    row_index: int  # position in the run's combined manifest; fixes the batch partition
    manifest_row: str  # MANIFEST:LINE as a person would look it up
    source_dataset: str
    source_path: str  # as written in the manifest
    resolved_path: str
    source_id: str
    labels: list[str]
    group: str | None
    metadata: dict[str, str] = field(default_factory=dict)
    error: str = ""  # reason code when the row itself is unusable
    error_message: str = ""
    start_s: float | None = None  # window inside a longer file; None: from the start / to the end
    end_s: float | None = None
    # Timestamped events of a recording, relative to the window's start: {"label", "onset_s", "offset_s"}.
    events: list[dict] = field(default_factory=list)
    table_row: int = -1  # row inside resolved_path when that file is a table of audio (a Hugging Face shard)
    audio_column: str = ""  # that table's audio column


@dataclass
class ManifestRead:
    """What reading the inputs gave: the rows, notes for the run report, and per source dataset the
    columns kept as provenance only (folds, source ids, windows), which questions never ask about."""

    rows: list[ManifestRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    provenance: dict[str, list[str]] = field(default_factory=dict)
    columns: set[str] = field(default_factory=set)  # every input's header together

    def extend(self, other: "ManifestRead") -> None:
        self.rows.extend(other.rows)
        self.notes.extend(other.notes)
        self.columns |= other.columns
        for dataset, columns in other.provenance.items():
            self.provenance[dataset] = sorted(set(self.provenance.get(dataset, [])) | set(columns))


def _cell_text(value: object) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _split_labels(value: object, sep: str = ";") -> list[str]:
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        items = list(value.tolist() if hasattr(value, "tolist") else value)
    else:
        items = _cell_text(value).split(sep)
    return [text for text in (_cell_text(item) for item in items) if text]


def _read_frame(reader, path: Path, **kwargs) -> pd.DataFrame:
    """`reader` (a pandas read function) applied to a local path, or to the opened file of a URL."""
    if not is_remote(path):
        return reader(path, **kwargs)
    with open_input(path) as handle:
        return reader(handle, **kwargs)


def _read_commented_csv(path: Path) -> tuple[pd.DataFrame, int] | None:
    """A CSV whose header is its last leading '#' line (AudioSet's segment lists), or None if not one."""
    with open_input(path, "r", encoding="utf-8") as handle:
        comments = []
        for line in handle:
            if not line.startswith("#"):
                break
            comments.append(line)
    if not comments or "," not in comments[-1]:
        return None
    names = [name.strip() for name in comments[-1].lstrip("#").split(",")]
    table = _read_frame(pd.read_csv, path, dtype=str, keep_default_na=False, encoding="utf-8",
                        skiprows=len(comments), names=names, header=None, skipinitialspace=True)
    return table, len(comments) + 1


def _tab_separated(path: Path) -> bool:
    """A '.csv' whose header has tabs and no commas (DCASE tools write such files)."""
    with open_input(path, "r", encoding="utf-8", errors="replace") as handle:
        header = handle.readline()
    return "\t" in header and "," not in header


def _read_table(path: Path) -> tuple[pd.DataFrame, int]:
    """The manifest as strings, and the line number of its first data row (for messages)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv" and not _tab_separated(path):
            return _read_commented_csv(path) or (
                _read_frame(pd.read_csv, path, dtype=str, keep_default_na=False, encoding="utf-8"), 2)
        if suffix in (".tsv", ".csv"):
            return _read_frame(pd.read_csv, path, sep="\t", dtype=str, keep_default_na=False, encoding="utf-8"), 2
        if suffix in (".jsonl", ".ndjson"):
            return _read_frame(pd.read_json, path, lines=True, dtype=False), 1
        if suffix == ".parquet":
            return _read_frame(pd.read_parquet, path), 1
    except (ValueError, UnicodeDecodeError, OSError, pd.errors.ParserError) as exc:
        raise InputError(f"manifest {path} could not be read ({exc}); check it is valid {suffix[1:].upper()}") from exc
    raise InputError(f"manifest {path}: unknown format '{suffix}'; use .csv, .tsv, .jsonl, .parquet or a folder")


def _folder_table(folder: Path) -> pd.DataFrame:
    rows = [
        {"path": str(file.relative_to(folder)), "label": label_dir.name}
        for label_dir in sorted(p for p in folder.iterdir() if p.is_dir())
        for file in sorted(label_dir.rglob("*"))
        if file.is_file() and file.suffix.lower() in AUDIO_EXTENSIONS
    ]
    if not rows:
        raise InputError(f"folder {folder} has no label sub-folders with audio files ({', '.join(AUDIO_EXTENSIONS)}) "
                         f"and no {' or '.join(AUDIOFOLDER_METADATA)}")
    return pd.DataFrame(rows)


def _auto_group_column(columns, group_by: str | None) -> str | None:
    """The column that groups rows for splitting: the one asked for, else `group`, else `speaker` (a speaker
    must never be on both sides of a split), else none (each clip is its own group)."""
    for candidate in (group_by, "group", "speaker"):
        if candidate and candidate in columns:
            return candidate
    return None


@dataclass(frozen=True)
class _Mapping:
    """One manifest's resolved mapping: which column gives what."""

    path_column: str | None
    path_template: str | None
    label_column: str
    label_sep: str
    group_column: str | None
    id_column: str | None
    start_column: str | None
    end_column: str | None
    onset_column: str | None
    offset_column: str | None
    provenance: tuple[str, ...]

    def used_columns(self) -> set[str]:
        """Columns that become the clip's path, labels, id or events rather than metadata."""
        template = set(_template_fields(self.path_template)) - set(self.provenance) if self.path_template else set()
        return template | {c for c in (self.path_column, self.label_column, self.id_column, self.onset_column,
                                       self.offset_column) if c}


def _template_fields(template: str) -> list[str]:
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name]
    except ValueError as exc:
        raise InputError(f"path template {template!r} is not valid ({exc}); write columns in braces, "
                         "e.g. 'audio/fold{fold}/{slice_file_name}'") from exc


def _missing(where: str, column: str, role: str, fix: str, columns: list[str], preset: Preset | None) -> InputError:
    expected = f" (preset {preset.name} expects it)" if preset else ""
    return InputError(f"manifest {where} has no column {column!r} for the {role}{expected}; its columns are "
                      f"{columns}. Pass {fix} (see README, 'Input manifest').")


def _resolve_mapping(entry: ColumnMapping, columns: list[str], where: str, preset: Preset | None,
                     lenient_group: bool) -> _Mapping:
    """Check the mapping against the header; InputError naming the column, the columns there and the flag."""
    present = set(columns)
    if entry.path_template or (preset and not entry.path_column):
        template = entry.path_template or preset.path_template
        for name in _template_fields(template):
            if name not in present:
                raise _missing(where, name, f"path template {template!r}",
                               "--path-template TEMPLATE with this manifest's columns, or another --preset", columns,
                               None if entry.path_template else preset)
        path_column = None
    else:
        template = None
        path_column = entry.path_column or "path"
        if path_column not in present:
            hint = " or --preset NAME" if not entry.path_column else ""
            raise InputError(f"manifest {where} has no {path_column!r} column for the audio paths; its columns are "
                             f"{columns}. Pass --path-column COLUMN (or --path-template){hint}, or add the column "
                             "(see README, 'Input manifest').")
    label_column = entry.label_column or (preset.label_column if preset else "label")
    if label_column not in present:
        raise _missing(where, label_column, "labels", "--label-column COLUMN to name the right one", columns,
                       None if entry.label_column else preset)
    group_column = entry.group_by or (preset.group_column if preset else None)
    if entry.group_by and entry.group_by not in present and not lenient_group:
        raise _missing(where, entry.group_by, "split groups", "--group-column COLUMN to name the right one", columns,
                       None)
    if group_column not in present:
        group_column = _auto_group_column(present, None)
    id_column = entry.id_column or (preset.id_column if preset else None)
    if entry.id_column and entry.id_column not in present:
        raise _missing(where, entry.id_column, "clip ids", "--id-column COLUMN to name the right one", columns, None)
    if id_column not in present:
        id_column = "id" if "id" in present else None
    start_column, end_column = ((preset.start_column, preset.end_column) if preset and preset.start_column
                                else SEGMENT_COLUMNS)
    onset_column, offset_column = ((preset.onset_column, preset.offset_column) if preset and preset.onset_column
                                   else EVENT_COLUMNS)
    if (onset_column in present) != (offset_column in present):
        have, lack = (onset_column, offset_column) if onset_column in present else (offset_column, onset_column)
        raise InputError(f"manifest {where} has {have!r} but no {lack!r}; timestamped events need both "
                         f"(its columns are {columns})")
    provenance = tuple(c for c in ((preset.provenance if preset else ()) + (start_column, end_column))
                       if c in present and c != label_column)
    return _Mapping(path_column, template, label_column, entry.label_sep or (preset.label_sep if preset else ";"),
                    group_column, id_column, start_column if start_column in present else None,
                    end_column if end_column in present else None,
                    onset_column if onset_column in present else None,
                    offset_column if offset_column in present else None, provenance)


def read_label_names(path: Path) -> dict[str, str]:
    """An id -> display name table (CSV or TSV with a header).

    The name column is the first of display_name, name, label, class_name; every other column may hold ids
    (AudioSet's class_labels_indices.csv: index, mid, display_name), so each maps to the name.
    """
    if not path.is_file():
        raise InputError(f"label name table {path} does not exist; pass --label-names with a CSV of id,name")
    try:
        table = _read_frame(pd.read_csv, path, dtype=str, keep_default_na=False,
                            sep="\t" if path.suffix.lower() == ".tsv" else ",")
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise InputError(f"label name table {path} could not be read ({exc}); give a CSV with a header") from exc
    name_column = next((c for c in ("display_name", "name", "label", "class_name") if c in table.columns),
                       table.columns[-1] if len(table.columns) >= 2 else None)
    if name_column is None:
        raise InputError(f"label name table {path} needs an id column and a name column (e.g. 'mid,display_name'); "
                         f"its columns are {list(table.columns)}")
    names: dict[str, str] = {}
    for column in table.columns:
        if column != name_column:
            names.update({_cell_text(i): _cell_text(n) for i, n in zip(table[column], table[name_column]) if _cell_text(i)})
    return names


def _name_labels(rows: list[ManifestRow], names: dict[str, str], table_path: Path, where: str) -> None:
    """Replace label ids by display names; InputError listing the ids the table lacks."""
    unknown = sorted({label for row in rows for label in row.labels + [e["label"] for e in row.events]
                      if label not in names})
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise InputError(f"manifest {where}: label ids {shown} have no name in {table_path}; add them to the table "
                         "or pass --label-names with a complete one")
    for row in rows:
        row.labels = list(dict.fromkeys(names[label] for label in row.labels))
        for event in row.events:
            event["label"] = names[event["label"]]


def _label_names_path(entry: ColumnMapping, preset: Preset | None, base: Path) -> Path | None:
    if entry.label_names:
        return location(entry.label_names)
    if preset and preset.label_names:
        for folder in (base, base.parent):
            if (folder / preset.label_names).is_file():
                return folder / preset.label_names
        raise InputError(f"preset {preset.name}: labels are ids and no {preset.label_names} was found beside the "
                         f"manifest in {base}; pass --label-names FILE (id -> display name)")
    return None


def _candidate_roots(preset: Preset | None, base: Path) -> list[Path]:
    roots: list[Path] = []
    for root in preset.roots if preset else (".",):
        if root == "<mirror>":
            parts = list(base.parts)
            if "metadata" in parts:
                at = len(parts) - 1 - parts[::-1].index("metadata")
                mirror = Path(*parts[:at], "audio", *parts[at + 1:])
                roots.append(mirror)
                if mirror.is_dir():
                    roots.extend(sorted(p for p in mirror.iterdir() if p.is_dir()))
        else:
            roots.append((base / root).resolve() if root != "." else base)
    return list(dict.fromkeys(roots))


def _choose_root(candidates: list[Path], relative_paths: list[str]) -> tuple[Path, str | None]:
    """The candidate under which most of the first rows' files exist; a note when none has any."""
    probe = [p for p in relative_paths if p and not (url_protocol(p) or Path(p).is_absolute())][:ROOT_PROBE_ROWS]
    if len(candidates) == 1 or not probe:
        return candidates[0], None
    found = [sum((root / p).is_file() for p in probe) for root in candidates]
    best = max(range(len(candidates)), key=lambda i: (found[i], -i))
    if found[best] == 0:
        return candidates[0], (f"none of the first {len(probe)} audio files were found under "
                               f"{', '.join(str(c) for c in candidates)}; pass --audio-root DIR")
    return candidates[best], None


def _seconds(value: object, what: str) -> tuple[float | None, str]:
    text = _cell_text(value)
    if not text:
        return None, ""
    try:
        seconds = float(text)
    except ValueError:
        return None, f"{what} {text!r} is not a number of seconds"
    if not math.isfinite(seconds) or seconds < 0:
        return None, f"{what} {text!r} must be a finite number of seconds >= 0"
    return seconds, ""


def _window_tag(start_s: float | None, end_s: float | None) -> str:
    """A W3C media-fragment suffix naming the window, e.g. '#t=30.000,40.000'."""
    if start_s is None and end_s is None:
        return ""
    return f"#t={start_s or 0:.3f}" + (f",{end_s:.3f}" if end_s is not None else "")


def _load(entry: ManifestEntry) -> tuple[pd.DataFrame, int, Path, str, str]:
    """(table, line of the first data row, folder relative paths start from, dataset name, where for messages)."""
    path = location(entry.path)
    check_reachable(path)  # a missing bucket or credentials are named as such, not as a missing manifest
    if not path.exists():
        raise InputError(f"manifest {path} does not exist; pass --manifest with a CSV, TSV, JSONL, Parquet file or folder")
    if path.is_dir():
        metadata = next((path / name for name in AUDIOFOLDER_METADATA if (path / name).is_file()), None)
        if metadata is not None:  # a Hugging Face AudioFolder
            table, first_line = _read_table(metadata)
            return table, first_line, path, path.name, str(metadata)
        return _folder_table(path), 1, path, path.name, str(path / "<folder>")
    table, first_line = _read_table(path)
    return table, first_line, path.parent, path.parent.name or path.stem, str(path)


def read_entry(entry: ManifestEntry, start_index: int = 0, lenient_group: bool = False) -> ManifestRead:
    """Rows of one input, numbered from `start_index`. `lenient_group`: a run-wide group column this
    manifest lacks is skipped rather than an error (several manifests share the flag)."""
    from cotaforge.hf_input import is_hf_folder, read_hf_dataset

    folder = location(entry.path) if entry.path else None
    audiofolder = folder is not None and any((folder / name).is_file() for name in AUDIOFOLDER_METADATA)
    if entry.hf_dataset or (folder and not audiofolder and is_hf_folder(folder)):
        return read_hf_dataset(entry, start_index)
    corpus_files = corpus_metadata_files(folder, entry.preset) if folder and folder.is_dir() and not audiofolder else []
    if corpus_files:  # a corpus's root folder: read its own metadata file(s), not its folders as labels
        read = ManifestRead()
        for path in corpus_files:
            read.extend(read_entry(entry.model_copy(update={"path": path}), start_index + len(read.rows), lenient_group))
        return read
    table, first_line, base, dataset, where = _load(entry)
    if table.empty:
        raise InputError(f"manifest {where} has no rows")
    columns = [str(c) for c in table.columns]
    table.columns = columns
    notes: list[str] = []
    preset = None
    if entry.preset:
        preset = match_preset(columns, entry.preset)
    elif not entry.path_column and not entry.path_template and "path" not in columns:
        preset = match_preset(columns)
        if preset:
            notes.append(f"{where}: preset {preset.name} detected from its columns ({', '.join(preset.header)}; "
                         f"layout: {preset.source}); pass --preset NAME to choose another")
    mapping = _resolve_mapping(entry, columns, where, preset, lenient_group)
    if preset and preset.name in ("esc50", "urbansound8k", "fsd50k", "audioset"):
        dataset = preset.name  # the corpus, whatever folder its metadata file sits in
    records = table.to_dict(orient="records")

    def relative_path(record: dict) -> str:
        if mapping.path_template:
            return mapping.path_template.format(**{k: _cell_text(v) for k, v in record.items()})
        return _cell_text(record.get(mapping.path_column))

    written_paths = [relative_path(r) for r in records]
    if entry.audio_root:
        root = location(entry.audio_root)
    else:
        root, note = _choose_root(_candidate_roots(preset, base), written_paths)
        if note:
            notes.append(f"{where}: {note}")
    metadata_columns = [c for c in columns if c not in mapping.used_columns() and c not in RESERVED_COLUMNS]
    rows = _rows(records, written_paths, mapping, root, dataset, where, first_line, start_index, metadata_columns)
    names_path = _label_names_path(entry, preset, base)
    if names_path:
        _name_labels(rows, read_label_names(names_path), names_path, where)
    for offset, row in enumerate(rows):
        row.row_index = start_index + offset
    return ManifestRead(rows, notes, {dataset: sorted(mapping.provenance)} if mapping.provenance else {}, set(columns))


def _rows(records: list[dict], written_paths: list[str], mapping: _Mapping, root: Path, dataset: str, where: str,
          first_line: int, start_index: int, metadata_columns: list[str]) -> list[ManifestRow]:
    """One row per clip; with onset/offset columns, one row per recording carrying its events."""
    rows: list[ManifestRow] = []
    recordings: dict[tuple, ManifestRow] = {}
    for offset, (record, written) in enumerate(zip(records, written_paths)):
        labels = _split_labels(record.get(mapping.label_column), mapping.label_sep)
        start_s, start_problem = _seconds(record.get(mapping.start_column), "start") if mapping.start_column else (None, "")
        end_s, end_problem = _seconds(record.get(mapping.end_column), "end") if mapping.end_column else (None, "")
        problem = start_problem or end_problem
        if not problem and start_s is not None and end_s is not None and end_s <= start_s:
            problem = f"the window ends ({end_s:g} s) before it starts ({start_s:g} s)"
        own_id = _cell_text(record.get(mapping.id_column)) if mapping.id_column else ""
        resolved = location(written) if url_protocol(written) or Path(written).is_absolute() else root / written
        group = _cell_text(record.get(mapping.group_column)) if mapping.group_column else ""
        if not group and (start_s is not None or end_s is not None):
            group = written  # windows of one recording never cross splits
        row = ManifestRow(
            row_index=start_index + offset,
            manifest_row=f"{where}:{first_line + offset}",
            source_dataset=dataset,
            source_path=written,
            resolved_path=str(resolved),
            source_id=(own_id or written) + _window_tag(start_s, end_s),
            labels=labels,
            group=group or None,
            metadata={c: _cell_text(record.get(c)) for c in metadata_columns if _cell_text(record.get(c))},
            start_s=start_s,
            end_s=end_s,
        )
        if mapping.onset_column:
            key = (str(resolved), start_s, end_s)
            recording = recordings.get(key)
            if recording is None:
                recording = recordings[key] = row
                row.labels = []
                rows.append(row)
            if problem and not recording.error:
                recording.error, recording.error_message = "segment_invalid", f"line {first_line + offset}: {problem}"
            _add_event(recording, record, labels, mapping, first_line + offset)
            continue
        if not written:
            row.error, row.error_message = "path_missing", "the row has an empty audio path; fill it in or remove the row"
        elif problem:
            row.error, row.error_message = "segment_invalid", f"{problem}; fix the row's start/end seconds"
        elif not labels:
            row.error, row.error_message = "label_missing", "the row has an empty label; give every clip at least one label"
        rows.append(row)
    for row in recordings.values():
        _finish_recording(row)
    return rows


def _add_event(recording: ManifestRow, record: dict, labels: list[str], mapping: _Mapping, line: int) -> None:
    """Add one annotation row's event(s) to its recording; a bad value marks the whole recording."""
    onset_s, onset_problem = _seconds(record.get(mapping.onset_column), "onset")
    offset_s, offset_problem = _seconds(record.get(mapping.offset_column), "offset")
    if not labels and onset_s is None and offset_s is None:
        return  # a recording listed with no events
    problem = onset_problem or offset_problem
    if not problem and (onset_s is None or offset_s is None):
        problem = "an event needs both an onset and an offset"
    if not problem and offset_s <= onset_s:
        problem = f"the event ends ({offset_s:g} s) before it starts ({onset_s:g} s)"
    if not problem and not labels:
        problem = "the event has no label"
    if problem and not recording.error:
        recording.error, recording.error_message = "event_invalid", f"line {line}: {problem}; fix the annotation row"
    if not problem:
        recording.events.extend({"label": label, "onset_s": onset_s, "offset_s": offset_s} for label in labels)


def _finish_recording(row: ManifestRow) -> None:
    """Sort a recording's events; its labels are their classes in order of first onset."""
    row.events.sort(key=lambda e: (e["onset_s"], e["offset_s"]))
    row.labels = list(dict.fromkeys(e["label"] for e in row.events))
    if row.error:
        return
    if not row.source_path:
        row.error, row.error_message = "path_missing", "the row has an empty audio path; fill it in or remove the row"
    elif not row.labels:
        row.error, row.error_message = "label_missing", "the recording has no annotated events; give it at least one"


def read_inputs(inputs: InputSection) -> ManifestRead:
    """All inputs of a run, in the order given: this order fixes clip batches and so resume."""
    entries = inputs.entries()
    if not entries:
        raise InputError("no manifest given; pass --manifest PATH (CSV, TSV, JSONL, Parquet or a folder) or --hf-dataset")
    read = ManifestRead()
    own_group = [isinstance(item, ManifestEntry) and item.group_by is not None for item in inputs.manifests]
    for entry, own in zip(entries, own_group):
        read.extend(read_entry(entry, start_index=len(read.rows), lenient_group=not own and len(entries) > 1))
    if inputs.group_by and len(entries) > 1 and inputs.group_by not in read.columns:
        raise InputError(f"no manifest has the column {inputs.group_by!r} given by --group-by/--group-column; "
                         "check its spelling against the manifests' headers")
    return read


def read_manifest(path: Path, group_by: str | None = None, start_index: int = 0, **mapping: object) -> list[ManifestRow]:
    """Rows of one manifest file or folder, numbered from `start_index`; `mapping` takes ColumnMapping keys."""
    return read_entry(ManifestEntry(path=location(path), group_by=group_by, **mapping), start_index).rows


def read_manifests(paths: list[Path], group_by: str | None = None) -> list[ManifestRow]:
    """The rows of several manifest files sharing one group column."""
    return read_inputs(InputSection(manifests=list(paths), group_by=group_by)).rows


def rows_to_frame(rows: list[ManifestRow]) -> pd.DataFrame:
    frame = pd.DataFrame([row.__dict__ for row in rows])
    frame["metadata"] = [json.dumps(row.metadata, sort_keys=True, ensure_ascii=False) for row in rows]
    frame["events"] = [json.dumps(row.events, ensure_ascii=False) for row in rows]
    frame["group"] = frame["group"].astype(object)
    for column in ("start_s", "end_s"):
        frame[column] = frame[column].astype("float64")
    return frame


def table_to_rows(table: pa.Table) -> list[ManifestRow]:
    """The rows of a manifest table written from `rows_to_frame` (Arrow to rows directly: through pandas took
    twice as long, a cost every batch of ingest pays, re-runs too)."""
    rows = []
    for record in table.to_pylist():
        record["metadata"] = json.loads(record["metadata"])
        record["events"] = json.loads(record["events"])
        for column in ("start_s", "end_s"):  # NaN was "no bound" in the frame
            value = record[column]
            record[column] = None if value is None or value != value else float(value)
        rows.append(ManifestRow(**record))
    return rows
