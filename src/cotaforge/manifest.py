"""Read input manifests (CSV, JSONL, Parquet, or a folder with one sub-folder per label) into one table.

Required columns: `path` (absolute, or relative to the manifest's folder) and `label` (several separated by
`;` in CSV, or a list in JSONL / Parquet). Optional: `group` (or the column named by --group-by; a `speaker`
column groups by default), `id`. Every other column is kept as metadata.
A manifest that cannot be read at all raises InputError; a row with a bad value is kept with an `error`
so ingest rejects that row alone and the rest of the run goes on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cotaforge.errors import InputError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3")
RESERVED_COLUMNS = ("path", "label", "group", "id")


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


def _cell_text(value: object) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _split_labels(value: object) -> list[str]:
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        items = list(value.tolist() if hasattr(value, "tolist") else value)
    else:
        items = _cell_text(value).split(";")
    return [text for text in (_cell_text(item) for item in items) if text]


def _read_table(path: Path) -> tuple[pd.DataFrame, int]:
    """The manifest as strings, and the line number of its first data row (for messages)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8"), 2
        if suffix in (".jsonl", ".ndjson"):
            return pd.read_json(path, lines=True, dtype=False), 1
        if suffix == ".parquet":
            return pd.read_parquet(path), 1
    except (ValueError, UnicodeDecodeError, OSError, pd.errors.ParserError) as exc:
        raise InputError(f"manifest {path} could not be read ({exc}); check it is valid {suffix[1:].upper()}") from exc
    raise InputError(f"manifest {path}: unknown format '{suffix}'; use .csv, .jsonl, .parquet or a folder of label folders")


def _folder_table(folder: Path) -> pd.DataFrame:
    rows = [
        {"path": str(file.relative_to(folder)), "label": label_dir.name}
        for label_dir in sorted(p for p in folder.iterdir() if p.is_dir())
        for file in sorted(label_dir.rglob("*"))
        if file.is_file() and file.suffix.lower() in AUDIO_EXTENSIONS
    ]
    if not rows:
        raise InputError(f"folder {folder} has no label sub-folders with audio files ({', '.join(AUDIO_EXTENSIONS)})")
    return pd.DataFrame(rows)


def _group_column(columns, group_by: str | None) -> str | None:
    """The column that groups rows for splitting: --group-by if this manifest has it, else `group`, else
    `speaker` (a speaker must never be on both sides of a split), else none (each clip is its own group)."""
    for candidate in (group_by, "group", "speaker"):
        if candidate and candidate in columns:
            return candidate
    return None


def read_manifest(path: Path, group_by: str | None = None, start_index: int = 0) -> list[ManifestRow]:
    """Rows of one manifest, numbered from `start_index`."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"manifest {path} does not exist; pass --manifest with a CSV, JSONL, Parquet file or folder")
    if path.is_dir():
        table, first_line, base, dataset = _folder_table(path), 1, path, path.name
        where = str(path / "<folder>")
    else:
        table, first_line = _read_table(path)
        base, dataset, where = path.parent, path.parent.name or path.stem, str(path)
    missing = [c for c in ("path", "label") if c not in table.columns]
    if missing:
        raise InputError(f"manifest {path} has no {' or '.join(repr(c) for c in missing)} column; "
                         f"its columns are {list(table.columns)}. Add them (see README, 'Input manifest').")
    if table.empty:
        raise InputError(f"manifest {path} has no rows")
    group_column = _group_column(table.columns, group_by)
    metadata_columns = [c for c in table.columns if c not in RESERVED_COLUMNS]  # a group column stays too

    rows: list[ManifestRow] = []
    for offset, record in enumerate(table.to_dict(orient="records")):
        written = _cell_text(record.get("path"))
        resolved = Path(written) if Path(written).is_absolute() else base / written
        labels = _split_labels(record.get("label"))
        row = ManifestRow(
            row_index=start_index + offset,
            manifest_row=f"{where}:{first_line + offset}",
            source_dataset=dataset,
            source_path=written,
            resolved_path=str(resolved),
            source_id=_cell_text(record.get("id")) or written,
            labels=labels,
            group=_cell_text(record.get(group_column)) or None if group_column else None,
            metadata={c: _cell_text(record.get(c)) for c in metadata_columns if _cell_text(record.get(c))},
        )
        if not written:
            row.error, row.error_message = "path_missing", "the row has an empty 'path'; fill it in or remove the row"
        elif not labels:
            row.error, row.error_message = "label_missing", "the row has an empty 'label'; give every clip at least one label"
        rows.append(row)
    return rows


def read_manifests(paths: list[Path], group_by: str | None = None) -> list[ManifestRow]:
    """All manifests of a run, in the order given: this order fixes clip batches and so resume."""
    if not paths:
        raise InputError("no manifest given; pass --manifest PATH (CSV, JSONL, Parquet or a folder of label folders)")
    rows: list[ManifestRow] = []
    for path in paths:
        rows.extend(read_manifest(Path(path), group_by, start_index=len(rows)))
    return rows


def rows_to_frame(rows: list[ManifestRow]) -> pd.DataFrame:
    frame = pd.DataFrame([row.__dict__ for row in rows])
    frame["metadata"] = [json.dumps(row.metadata, sort_keys=True, ensure_ascii=False) for row in rows]
    frame["group"] = frame["group"].astype(object)
    return frame


def frame_to_rows(frame: pd.DataFrame) -> list[ManifestRow]:
    rows = []
    for record in frame.to_dict(orient="records"):
        record["labels"] = list(record["labels"])
        record["metadata"] = json.loads(record["metadata"])
        record["group"] = record["group"] if isinstance(record["group"], str) else None
        rows.append(ManifestRow(**record))
    return rows
