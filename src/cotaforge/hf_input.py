"""Hugging Face datasets as input: a `save_to_disk` folder (Arrow), Parquet shards, or a Hub dataset name.

The dataset is streamed, never loaded whole: reading the manifest takes every column but the audio, batch by
batch; ingest then reads each row's audio cell from its shard (Arrow files are memory-mapped, Parquet is read a
row group at a time) and decodes the bytes in memory, with no temporary files. The `Audio` column is the
struct {bytes, path} that `datasets` writes; a row with no bytes is read from its path (relative paths start
at the shard's folder). Class names come from a `ClassLabel` feature (or a list of them) when the label
column has one. A Hub name is fetched once into the local Hugging Face cache (its Parquet files, or the Hub's
Parquet conversion) and read from there.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cotaforge.config import ManifestEntry
from cotaforge.errors import InputError
from cotaforge.location import arrow_source, location, url_protocol
from cotaforge.manifest import ManifestRead, ManifestRow, _auto_group_column, _cell_text, _label_names_path, \
    _name_labels, _split_labels, read_label_names

_SHARD_NAME = re.compile(r"^([A-Za-z][\w.]*?)-\d{5}-of-\d{5}")
MANIFEST_BATCH_ROWS = 4096  # rows per batch while reading the non-audio columns


@dataclass(frozen=True)
class _Shard:
    path: Path
    split: str

    @property
    def is_parquet(self) -> bool:
        return self.path.suffix == ".parquet"


def is_hf_folder(folder: Path) -> bool:
    """A `save_to_disk` folder (Dataset or DatasetDict) or a folder of Parquet shards."""
    return folder.is_dir() and ((folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()
                                or any(folder.rglob("*.parquet")))


def _saved_shards(folder: Path, split: str) -> list[_Shard]:
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    return [_Shard(folder / item["filename"], state.get("_split") or split) for item in state["_data_files"]]


def _shards(folder: Path) -> list[_Shard]:
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        return [shard for split in splits for shard in _saved_shards(folder / split, split)]
    if (folder / "state.json").is_file():
        return _saved_shards(folder, "")
    shards = []
    for path in sorted(folder.rglob("*.parquet")):
        named = _SHARD_NAME.match(path.name)  # data/train-00000-of-00002.parquet
        shards.append(_Shard(path, named.group(1) if named else (path.parent.name if path.parent != folder else "")))
    return shards


def _features(shard: _Shard, schema: pa.Schema) -> dict:
    """The `datasets` features: from the schema's 'huggingface' metadata, else dataset_info.json beside it."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if raw:
        return json.loads(raw).get("info", {}).get("features", {}) or {}
    info = shard.path.parent / "dataset_info.json"
    return json.loads(info.read_text(encoding="utf-8")).get("features", {}) if info.is_file() else {}


def _schema(shard: _Shard) -> pa.Schema:
    if shard.is_parquet:
        where, filesystem = arrow_source(shard.path)
        return pq.read_schema(where, filesystem=filesystem)
    with pa.memory_map(str(shard.path)) as source:
        return pa.ipc.open_stream(source).schema


def _batches(shard: _Shard, columns: list[str]):
    """The shard's rows, a batch at a time, with only `columns` ('audio.path' names a struct field)."""
    if shard.is_parquet:
        yield from _parquet_file(str(shard.path)).iter_batches(batch_size=MANIFEST_BATCH_ROWS, columns=columns)
        return
    with pa.memory_map(str(shard.path)) as source:  # mapped, so the audio bytes are never read here
        for batch in pa.ipc.open_stream(source):
            arrays, names = [], []
            for column in columns:
                top, _, child = column.partition(".")
                array = batch.column(top)
                arrays.append(pa.StructArray.from_arrays([array.field(child)], [child]) if child else array)
                names.append(top)
            yield pa.RecordBatch.from_arrays(arrays, names=names)


def _class_names(feature: dict) -> list[str] | None:
    """Names of a ClassLabel feature, or of a Sequence/List of ClassLabel."""
    if feature.get("_type") == "ClassLabel":
        return feature.get("names")
    inner = feature.get("feature")
    if feature.get("_type") in ("Sequence", "List", "LargeList") and isinstance(inner, dict):
        return _class_names(inner)
    return None


def _audio_column(entry: ManifestEntry, features: dict, schema: pa.Schema, where: str) -> str:
    columns = schema.names
    if entry.path_column:
        if entry.path_column not in columns:
            raise InputError(f"dataset {where} has no column {entry.path_column!r} for the audio; its columns are "
                             f"{columns}. Pass --path-column with the Audio column's name.")
        return entry.path_column
    named = [name for name, feature in features.items() if isinstance(feature, dict) and feature.get("_type") == "Audio"]
    structs = [field.name for field in schema if pa.types.is_struct(field.type)
               and {"bytes", "path"} <= {field.type.field(i).name for i in range(field.type.num_fields)}]
    found = [c for c in named if c in columns] or structs
    if not found:
        raise InputError(f"dataset {where} has no Audio column (a struct of bytes and path); its columns are "
                         f"{columns}. Pass --path-column with the column that holds the audio.")
    return found[0]


def _fetch_from_hub(name: str) -> Path:
    """A Hub dataset's Parquet files in the local Hugging Face cache (its own, or the Hub's conversion)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise InputError("reading a Hub dataset needs huggingface_hub (pip install huggingface_hub), or pass a "
                         "local save_to_disk / Parquet folder to --hf-dataset") from exc
    patterns = ["*.parquet", "**/*.parquet", "*.json", "**/*.json"]
    try:
        folder = Path(snapshot_download(repo_id=name, repo_type="dataset", allow_patterns=patterns))
        if not any(folder.rglob("*.parquet")):
            folder = Path(snapshot_download(repo_id=name, repo_type="dataset", allow_patterns=patterns,
                                            revision="refs/convert/parquet"))
    except Exception as exc:  # the hub client raises many types (network, auth, not found)
        raise InputError(f"Hugging Face dataset {name!r} could not be fetched ({type(exc).__name__}: {exc}); check "
                         "the name, your network and HF_TOKEN, or pass a local folder to --hf-dataset") from exc
    if not any(folder.rglob("*.parquet")):
        raise InputError(f"Hugging Face dataset {name!r} has no Parquet files; save it locally with "
                         "save_to_disk and pass that folder to --hf-dataset")
    return folder


def read_hf_dataset(entry: ManifestEntry, start_index: int = 0) -> ManifestRead:
    """Rows of a Hugging Face dataset, one per example, each pointing at its shard and row for ingest."""
    source = entry.hf_dataset or str(entry.path)
    given = folder = location(source)
    if not folder.exists():
        if "/" not in source or source.startswith((".", "/")):
            raise InputError(f"Hugging Face dataset {source} does not exist; pass a save_to_disk or Parquet folder, "
                             "or a Hub name such as 'org/name'")
        folder = _fetch_from_hub(source)
    dataset = given.name if given.exists() else source.rstrip("/").rsplit("/", 1)[-1]
    shards = [s for s in _shards(folder) if entry.hf_split in (None, s.split)]
    if not shards:
        raise InputError(f"Hugging Face dataset {source} has no data files"
                         + (f" for split {entry.hf_split!r}" if entry.hf_split else "")
                         + "; pass a save_to_disk folder, a folder of Parquet shards, or another --set hf_split")
    schema = _schema(shards[0])
    features = _features(shards[0], schema)
    where = str(source)
    audio = _audio_column(entry, features, schema, where)
    columns = schema.names
    label_column = entry.label_column or "label"
    if label_column not in columns:
        raise InputError(f"dataset {where} has no column {label_column!r} for the labels; its columns are "
                         f"{columns}. Pass --label-column COLUMN.")
    if entry.group_by and entry.group_by not in columns:
        raise InputError(f"dataset {where} has no column {entry.group_by!r} for the split groups; its columns are "
                         f"{columns}. Pass --group-column COLUMN.")
    group_column = _auto_group_column(columns, entry.group_by)
    id_column = entry.id_column or ("id" if "id" in columns else None)
    if id_column not in columns and entry.id_column:
        raise InputError(f"dataset {where} has no column {id_column!r} for the clip ids; its columns are {columns}. "
                         "Pass --id-column COLUMN.")
    names = _class_names(features.get(label_column, {}) or {})
    scalar = [f.name for f in schema if f.name not in (audio, label_column, id_column)
              and not pa.types.is_nested(f.type) and not pa.types.is_binary(f.type)]
    wanted = [f"{audio}.path", label_column] + ([id_column] if id_column else []) + scalar

    rows: list[ManifestRow] = []
    for shard in shards:
        row_in_shard = 0
        for batch in _batches(shard, wanted):
            data = batch.to_pydict()
            for i in range(batch.num_rows):
                inner_path = (data[audio][i] or {}).get("path") or ""
                labels = _labels(data[label_column][i], names, entry.label_sep or ";")
                own_id = _cell_text(data[id_column][i]) if id_column else ""
                source_path = inner_path or f"{shard.path.name}[{row_in_shard}]"
                metadata = {c: _cell_text(data[c][i]) for c in scalar if _cell_text(data[c][i])}
                if shard.split:
                    metadata["split"] = shard.split
                row = ManifestRow(
                    row_index=start_index + len(rows), manifest_row=f"{shard.path}:row {row_in_shard}",
                    source_dataset=dataset, source_path=source_path, resolved_path=str(shard.path),
                    source_id=own_id or source_path, labels=labels,
                    group=_cell_text(data[group_column][i]) or None if group_column else None,
                    metadata=metadata, table_row=row_in_shard, audio_column=audio)
                if not labels:
                    row.error, row.error_message = "label_missing", "the example has no label; give it at least one"
                rows.append(row)
                row_in_shard += 1
    names_path = _label_names_path(entry, None, folder)
    if names_path:
        _name_labels(rows, read_label_names(names_path), names_path, where)
    provenance = ["split"] if any(s.split for s in shards) else []
    return ManifestRead(rows, [], {dataset: provenance} if provenance else {}, set(columns))


def _labels(value: object, names: list[str] | None, sep: str) -> list[str]:
    """A label cell as class names: ClassLabel integers through `names`, strings split on `sep`."""
    items = value if isinstance(value, list) else [value]
    if names is not None:
        return [names[v] for v in items if isinstance(v, int) and 0 <= v < len(names)]  # -1: no label
    return [label for item in items for label in _split_labels(item, sep)]


@lru_cache(maxsize=8)
def _arrow_table(path: str) -> pa.Table:
    # Memory-mapped: only the pages of the cells actually read are loaded.
    return pa.ipc.open_stream(pa.memory_map(path)).read_all()


def _parquet_file(path: str) -> pq.ParquetFile:
    """A Parquet shard by its path or URL (read through fsspec)."""
    where, filesystem = arrow_source(location(path))
    return pq.ParquetFile(where, filesystem=filesystem)


@lru_cache(maxsize=8)
def _row_group_starts(path: str) -> tuple[int, ...]:
    metadata = _parquet_file(path).metadata
    starts, total = [], 0
    for i in range(metadata.num_row_groups):
        starts.append(total)
        total += metadata.row_group(i).num_rows
    return tuple(starts + [total])


@lru_cache(maxsize=2)  # a batch reads its rows in order, so the row group in hand is nearly always the next
def _row_group(path: str, index: int, column: str) -> pa.Table:
    return _parquet_file(path).read_row_group(index, columns=[column])


def read_audio_cell(shard: Path, row: int, column: str) -> tuple[bytes | None, str]:
    """(the audio bytes of one example, or None; the path it names, resolved from the shard's folder)."""
    if shard.suffix == ".parquet":
        starts = _row_group_starts(str(shard))
        index = max(i for i, start in enumerate(starts[:-1]) if start <= row)
        cell = _row_group(str(shard), index, column).column(column)[row - starts[index]].as_py()
    else:
        cell = _arrow_table(str(shard)).column(column)[row].as_py()
    cell = cell or {}
    inner = cell.get("path") or ""
    if inner and not (url_protocol(inner) or Path(inner).is_absolute()):
        inner = str(shard.parent / inner)
    return cell.get("bytes"), inner or f"{shard}[{row}]"
