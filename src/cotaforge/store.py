"""The run directory: one Parquet part per (stage, batch), written atomically and stamped with a fingerprint.

    <out>/runs/<run>/
        config.yaml, config.sha256     the resolved config and its hash
        manifest.parquet               the combined input manifest (fixes the batch partition)
        <stage>/part-00000.parquet     one part per batch; schema metadata holds fingerprint and report
        rejects/<stage>/part-00000.parquet
        report.json, report.md         the run report

A part's fingerprint hashes everything that made it (stage config, prompt versions, teacher, the upstream
part's fingerprint), so a re-run skips parts whose fingerprint matches and redoes exactly the rest.
The rejects file is written before the part: a part on disk means its batch is complete.

Temporary files carry their writer's host and pid in their name (`.part-00003.parquet.<host>-<pid>-<id>.tmp`),
so the next start of a run removes what a killed writer left behind without touching what a live one is
writing. A part that cannot be read (a truncated file) counts as missing: its batch is redone.

The run directory may be a URL of an object store (`--out s3://bucket/prefix`, see `cotaforge.location`).
There a finished file is written to a local temporary file and uploaded to its final key in one PUT, so an
object exists only once complete and no temporaries are left in the bucket; reads go through fsspec. Resume
is the same: fingerprints come from the objects' Parquet footers.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import socket
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from cotaforge.config import RunConfig, stable_hash
from cotaforge.errors import CotaforgeError
from cotaforge.location import arrow_source, is_remote, location, storage_errors, upload_when_done
from cotaforge.models import Rejection, StageReport, TeacherUsage

log = logging.getLogger(__name__)

STAGES = ("ingest", "compose", "caption", "expand", "validate", "balance", "publish")

FACTS_TYPE = pa.struct([
    ("duration_s", pa.float64()), ("loudness_dbfs", pa.float64()), ("peak_dbfs", pa.float64()),
    ("clipping_ratio", pa.float64()), ("silence_ratio", pa.float64()), ("spectral_centroid_hz", pa.float64()),
    ("onset_count", pa.int64()), ("tempo_bpm", pa.float64()), ("f0_median_hz", pa.float64()),
    ("voiced_ratio", pa.float64()),
])
CLIP_SCHEMA = pa.schema([
    ("clip_id", pa.string()), ("group_id", pa.string()), ("source_dataset", pa.string()),
    ("source_path", pa.string()), ("source_id", pa.string()), ("manifest_row", pa.string()),
    ("labels", pa.list_(pa.string())), ("class_label", pa.string()), ("metadata", pa.string()),
    ("original_sample_rate_hz", pa.int64()), ("original_channels", pa.int64()), ("sample_rate_hz", pa.int64()),
    ("facts", FACTS_TYPE), ("scene_kind", pa.string()), ("events", pa.string()), ("twin_of_clip", pa.string()),
    ("twin_change", pa.string()), ("row_index", pa.int64()), ("audio_wav", pa.binary()),
])
CAPTION_SCHEMA = pa.schema([
    ("clip_id", pa.string()), ("mode", pa.string()), ("text", pa.string()), ("prompt_version", pa.string()),
])
TEACHER_TYPE = pa.struct([
    ("backend", pa.string()), ("model", pa.string()), ("prompt_versions", pa.list_(pa.string())),
    ("parameters", pa.string()),
])
SAMPLE_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("clip_id", pa.string()), ("group_id", pa.string()),
    ("source_dataset", pa.string()), ("source_path", pa.string()), ("source_id", pa.string()),
    ("duration_s", pa.float64()), ("sample_rate_hz", pa.int64()), ("labels", pa.list_(pa.string())),
    ("class_label", pa.string()), ("metadata", pa.string()), ("question_type", pa.string()),
    ("prompt_style", pa.string()), ("target", pa.string()), ("target_value", pa.string()),
    ("asked_value", pa.string()), ("question", pa.string()), ("options", pa.list_(pa.string())),
    ("answer", pa.string()), ("planning", pa.string()), ("caption", pa.string()), ("reasoning", pa.string()),
    ("summary", pa.string()), ("response", pa.string()), ("assistant_text", pa.string()),
    ("teacher", TEACHER_TYPE), ("validation", pa.string()), ("review", pa.string()), ("split", pa.string()),
    ("schema_version", pa.string()), ("scene_kind", pa.string()), ("events", pa.string()), ("twin_of", pa.string()),
])
REJECTION_SCHEMA = pa.schema([
    ("stage", pa.string()), ("reason", pa.string()), ("reasons", pa.list_(pa.string())), ("message", pa.string()),
    ("manifest_row", pa.string()), ("source_path", pa.string()), ("clip_id", pa.string()),
    ("sample_id", pa.string()), ("raw", pa.string()),
])

_FINGERPRINT_KEY = b"cotaforge.fingerprint"
_REPORT_KEY = b"cotaforge.report"


# Only columns with few distinct values are dictionary-encoded: for long text and audio bytes a dictionary
# saves nothing and makes every read several times slower.
_DICTIONARY_COLUMNS = {"source_dataset", "class_label", "question_type", "prompt_style", "target", "answer",
                       "split", "schema_version", "mode", "prompt_version", "stage", "reason"}


def dictionary_columns(schema: pa.Schema) -> list[str]:
    return [name for name in schema.names if name in _DICTIONARY_COLUMNS]


# -- temporaries and their owners ----------------------------------------------------------------------------

_OWNED_FILE = re.compile(r"^\.(?P<name>.+)\.(?P<owner>[A-Za-z0-9]+-\d+-[0-9a-f]{8})\.tmp$")
_UNOWNED_FILE = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{8}\.tmp$")  # written before temporaries named their owner
UNOWNED_GRACE_S = 3600.0  # a temporary that names no owner is left alone this long after its last write


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def owner_tag() -> str:
    """`<host>-<pid>-<random>`: names a temporary's writer, so a later start can tell a live writer from a dead one."""
    return f"{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    try:  # a killed process its parent has not reaped yet still answers signal 0
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def owner_alive(tag: str) -> bool:
    """Whether the writer named by an `owner_tag` may still be writing. A writer on another host is taken
    to be alive: its pid means nothing here."""
    host, pid, _ = tag.rsplit("-", 2)
    if host != _host():
        return True
    return _pid_alive(int(pid))


def is_stale_temporary(path: Path) -> bool:
    """A temporary file (`.<name>.<owner>.tmp`) whose writer is gone; unowned ones once an hour old."""
    owned = _OWNED_FILE.match(path.name)
    if owned:
        return not owner_alive(owned["owner"])
    if _UNOWNED_FILE.match(path.name):
        try:
            return time.time() - path.stat().st_mtime > UNOWNED_GRACE_S
        except FileNotFoundError:
            return False
    return False


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files under `folder` that no live process is writing; returns what went.
    An object store holds none (files are uploaded whole), so nothing is looked for there."""
    removed = []
    if is_remote(folder):
        return removed
    for path in sorted(Path(folder).rglob(".*.tmp")) if Path(folder).is_dir() else []:
        if path.is_file() and is_stale_temporary(path):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def temporary_beside(path: Path) -> Path:
    """Where a file is written before its rename into place: hidden, beside it, named after its writer."""
    return path.with_name(f".{path.name}.{owner_tag()}.tmp")


@contextmanager
def writing(path: Path) -> Iterator[Path]:
    """A local file to write `path`'s content into; when the block ends without an error it becomes `path`
    whole: renamed into place from beside it (a temporary named after its writer), or on an object store
    uploaded to the key in one PUT. On an error nothing is left at `path` or beside it."""
    if is_remote(path):
        with upload_when_done(path, suffix=path.suffix) as local:
            yield local
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_table_atomic(table: pa.Table, path: Path, metadata: dict[bytes, bytes] | None = None,
                       compression: str = "zstd") -> None:
    """Write a Parquet file that readers only ever see whole (see `writing`)."""
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    with writing(path) as tmp:
        pq.write_table(table, tmp, compression=compression, use_dictionary=dictionary_columns(table.schema))


def write_text_atomic(path: Path, text: str) -> None:
    with writing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_schema(path: Path) -> pa.Schema:
    """A Parquet file's schema (its footer alone), local or remote."""
    where, filesystem = arrow_source(path)
    with storage_errors(path):
        return pq.read_schema(where, filesystem=filesystem)


def read_metadata(path: Path) -> pq.FileMetaData:
    """A Parquet file's footer metadata (rows, row groups), local or remote."""
    where, filesystem = arrow_source(path)
    with storage_errors(path):
        return pq.read_metadata(where, filesystem=filesystem)


def read_table(path: Path, columns: list[str] | None = None, filters: list | None = None) -> pa.Table:
    """A Parquet file (some columns, rows matching `filters`), local or remote."""
    where, filesystem = arrow_source(path)
    with storage_errors(path):
        return pq.read_table(where, columns=columns, filters=filters, filesystem=filesystem)


def read_footer(path: Path) -> tuple[dict[bytes, bytes] | None, str | None]:
    """(schema metadata, None) of a readable Parquet file, else (None, what is wrong with it).

    A local file's footer is read once per process while its size and modification time stay the same: deciding
    whether a batch is current reads its part's and its inputs' footers, and a re-run asks that of every batch
    of every stage.
    """
    if not is_remote(path):
        try:
            stat = os.stat(path)
        except OSError as exc:
            return None, f"unreadable ({exc.strerror or type(exc).__name__})"
        return _local_footer(str(path), stat.st_size, stat.st_mtime_ns)
    return _read_footer(path)


@functools.lru_cache(maxsize=4096)
def _local_footer(path: str, size: int, mtime_ns: int) -> tuple[dict[bytes, bytes] | None, str | None]:
    return _read_footer(Path(path))


def _read_footer(path: Path) -> tuple[dict[bytes, bytes] | None, str | None]:
    try:
        return read_schema(path).metadata or {}, None
    except (pa.ArrowException, OSError) as exc:
        return None, f"unreadable ({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})"


class RunDir:
    """Paths and part bookkeeping of one run. Cheap to build; holds no data."""

    def __init__(self, root: Path | str) -> None:
        self.root = location(root)

    @classmethod
    def for_config(cls, cfg: RunConfig) -> "RunDir":
        return cls(cfg.run.out_dir / "runs" / cfg.run_name)

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.parquet"

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def part_path(self, stage: str, batch: int) -> Path:
        return self.root / stage / f"part-{batch:05d}.parquet"

    def rejects_path(self, stage: str, batch: int | str) -> Path:
        name = f"part-{batch:05d}" if isinstance(batch, int) else batch
        return self.root / "rejects" / stage / f"{name}.parquet"

    def batch_count(self) -> int:
        if not self.manifest_path.exists():
            raise FileNotFoundError(f"{self.manifest_path} is missing: run ingest first")
        metadata = read_schema(self.manifest_path).metadata or {}
        return int(metadata[b"cotaforge.batches"])

    def manifest_rows(self) -> int:
        return read_metadata(self.manifest_path).num_rows

    def part_rows(self, stage: str) -> int:
        """Rows in the current parts of a stage, from the Parquet footers alone (an unreadable part counts 0)."""
        total = 0
        for batch in range(self.batch_count()):
            try:
                total += read_metadata(self.part_path(stage, batch)).num_rows
            except (pa.ArrowException, OSError):
                pass
        return total

    def part_problem(self, stage: str, batch: int) -> str | None:
        """What makes an existing part (or its rejects file) unusable, e.g. a file cut short by a crash;
        None when both read, or when the part does not exist."""
        path = self.part_path(stage, batch)
        if not path.exists():
            return None
        for file in (path, self.rejects_path(stage, batch)):
            if file.exists():
                metadata, problem = read_footer(file)
                if metadata is None:
                    return f"{file} is {problem}"
        return None

    def part_fingerprint(self, stage: str, batch: int) -> str | None:
        """The fingerprint stored in a part; None when the part is missing or unreadable (then it is redone)."""
        path = self.part_path(stage, batch)
        if not path.exists():
            return None
        problem = self.part_problem(stage, batch)
        if problem is not None:
            log.warning("%s; batch %d of %s will be redone", problem, batch, stage)
            return None
        metadata, _ = read_footer(path)
        return (metadata or {}).get(_FINGERPRINT_KEY, b"").decode() or None

    def stored_report(self, stage: str, batch: int) -> StageReport:
        """The report a part was made with, as a skipped part's: nothing sent now, its teacher usage as what
        the part holds."""
        path = self.part_path(stage, batch)
        metadata, problem = read_footer(path)
        if metadata is None:
            raise CotaforgeError(f"{path} is {problem}: delete it and run again to redo batch {batch}")
        report = StageReport.model_validate_json(metadata[_REPORT_KEY])
        return report.model_copy(update={"parts_done": 0, "parts_skipped": 1, "seconds": 0.0,
                                         "teacher": TeacherUsage(), "parts_teacher": report.teacher})

    def write_part(self, stage: str, batch: int, table: pa.Table, fingerprint: str,
                   rejects: list[Rejection], report: StageReport) -> None:
        """Write a batch's rejects, then its part. `report` becomes what the part holds (its teacher usage as
        `parts_teacher`); a damaged part it replaces is named in the report's notes."""
        damaged = self.part_problem(stage, batch)
        report.parts_teacher = report.teacher.model_copy()
        write_rejects(self.rejects_path(stage, batch), rejects)
        write_table_atomic(table, self.part_path(stage, batch), {
            _FINGERPRINT_KEY: fingerprint.encode(),
            _REPORT_KEY: report.model_dump_json().encode(),
        })
        if damaged:
            report.notes.append(f"{damaged}; batch {batch} was redone")

    def read_part(self, stage: str, batch: int, columns: list[str] | None = None) -> pa.Table:
        path = self.part_path(stage, batch)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run the '{stage}' stage first")
        try:
            return read_table(path, columns=columns)
        except (pa.ArrowException, OSError) as exc:
            raise CotaforgeError(f"{path} is unreadable ({str(exc).splitlines()[0][:200]}): run the '{stage}' "
                                 f"stage again to redo batch {batch}") from exc

    def clear_stale_temporaries(self) -> list[Path]:
        """Remove the temporary files killed writers left in this run's folder (live writers' stay)."""
        return remove_stale_temporaries(self.root)

    def rejects(self, stage: str | None = None) -> pa.Table:
        """All reject rows of the current parts (of one stage, or every stage)."""
        stages = [stage] if stage else STAGES
        tables = [read_table(p) for s in stages for p in sorted((self.root / "rejects" / s).glob("*.parquet"),
                                                                 key=str)]
        return pa.concat_tables(tables) if tables else REJECTION_SCHEMA.empty_table()


def write_rejects(path: Path, rejects: list[Rejection]) -> None:
    rows = [r.model_dump() for r in rejects]
    write_table_atomic(pa.Table.from_pylist(rows, schema=REJECTION_SCHEMA), path)


def fingerprint(stage: str, *parts: object) -> str:
    return stable_hash([stage, *parts])


def json_dumps(value: object) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
