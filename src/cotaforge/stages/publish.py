"""publish: balanced samples -> a versioned Hugging Face-compatible dataset.

Inputs: `balance/part-N` and the 16 kHz audio of `ingest/part-N`. Output, under
`<out>/datasets/<name>/<version>/`: `data/<split>-NNNNN-of-NNNNN.parquet` (the `audio` column is the
Hugging Face `Audio` feature, `{bytes, path}`, and each shard carries the features metadata, so
`datasets.load_dataset("parquet", data_dir=...)` decodes it), `manifest.json` (rows and sha256 per shard),
a dataset card `README.md` with a `configs` block, statistics tables and plots under `plots/`.

Splits go by group (the manifest's group column, e.g. the speaker, or else the clip), decided per source
dataset so every dataset reaches every split, and no group crosses splits.

Memory stays flat in the batch size and the number of samples: each batch's rows are built in slices of at
most SLICE_ROWS rows and SLICE_AUDIO_BYTES of audio (a clip's audio is copied into each of its ~10 samples,
so a whole batch's published rows would be many times its audio), and shards are written in row groups
bounded in rows and audio bytes (ROW_GROUP_ROWS, ROW_GROUP_AUDIO_BYTES): the same shards whatever the batch
size was.

On a local disk the version is built in a temporary folder beside it and renamed into place: a reader never
sees half a version. On an object store (`--out s3://...`) there is no folder rename, so a version is
complete exactly when its `manifest.json` exists: publishing a changed version first deletes the old
`manifest.json` (and card), uploads each shard whole under its final key as soon as it is written, then the
plots and card, then `manifest.json` last, and only then deletes the objects of the replaced version that the
new one does not have. A publish killed on the way leaves a version without `manifest.json`, which the next
publish redoes; `dataset_files` gives the shards of complete versions only.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import shutil
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cotaforge import __version__, progress
from cotaforge.config import RunConfig, stable_hash
from cotaforge.cot import option_letter
from cotaforge.errors import ConfigError, CotaforgeError
from cotaforge.location import is_remote, location, put_file, storage_errors
from cotaforge.models import (SAMPLE_RATE_HZ, SCHEMA_VERSION, SYSTEM_PROMPT, Rejection, ShardInfo, ShardManifest,
                              StageReport)
from cotaforge.stages.ingest import read_clip_audio
from cotaforge.store import (SAMPLE_SCHEMA, RunDir, dictionary_columns, fingerprint, owner_alive, owner_tag,
                             write_rejects)

STAGE = "publish"
STAGE_VERSION = 2
COT_LENGTH_BINS = list(range(0, 1001, 25))  # words
SCENE_EXAMPLES = 4  # scenes drawn in the card's timeline picture
# A shard's row groups end at ROW_GROUP_ROWS rows or before ROW_GROUP_AUDIO_BYTES of audio, whichever comes
# first (a row larger than that alone is a group of its own). Each split's writer holds up to a row group, so
# this sets most of publish's memory; 500 rows still keep the ~10 copies of a clip's audio in one compressed
# page (shards within 1% of the size of one large group per batch; 250 rows cost 5%, 100 rows 15%).
ROW_GROUP_ROWS = 500
ROW_GROUP_AUDIO_BYTES = 32 << 20
SLICE_ROWS = 250  # published rows built at once, at most ...
SLICE_AUDIO_BYTES = 16 << 20  # ... and at most this much audio in them (one row may exceed it alone)

MESSAGE_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
AUDIO_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
PUBLISHED_SCHEMA = pa.schema([SAMPLE_SCHEMA.field(0), SAMPLE_SCHEMA.field(1), SAMPLE_SCHEMA.field(2),
                              pa.field("audio", AUDIO_TYPE), *list(SAMPLE_SCHEMA)[3:],
                              pa.field("messages", MESSAGE_TYPE)])


def hf_features() -> dict:
    """The `datasets` features of a published row, stored in every shard's metadata."""

    def convert(arrow_type: pa.DataType) -> object:
        if pa.types.is_list(arrow_type):
            inner = arrow_type.value_type
            if pa.types.is_struct(inner):
                return [convert(inner)]
            return {"feature": convert(inner), "_type": "Sequence"}
        if pa.types.is_struct(arrow_type):
            return {f.name: convert(f.type) for f in arrow_type}
        name = {pa.string(): "string", pa.int64(): "int64", pa.float64(): "float64", pa.binary(): "binary",
                pa.bool_(): "bool"}[arrow_type]
        return {"dtype": name, "_type": "Value"}

    features = {f.name: convert(f.type) for f in PUBLISHED_SCHEMA}
    features["audio"] = {"sampling_rate": SAMPLE_RATE_HZ, "_type": "Audio"}
    return features


def pinned_split(group_id: str, pinned: dict[str, str]) -> str | None:
    """The split `publish.group_splits` pins a group to: by its full id or by the manifest's value after
    the `<source_dataset>:` prefix ingest adds (so `{'5': test}` pins ESC-50's fold 5)."""
    if group_id in pinned:
        return pinned[group_id]
    _, _, value = group_id.partition(":")
    return pinned.get(value) if value else None


def assign_splits(groups: dict[str, dict[str, int]], ratios: dict[str, float], seed: int,
                  pinned: dict[str, str] | None = None) -> dict[str, str]:
    """Map each group to a split, per source dataset, so sample counts follow the ratios.

    `groups` is {source_dataset: {group_id: samples}}. Groups `pinned` names (see `pinned_split`) go to
    their split first. The rest are taken in a seeded hash order; while a dataset has groups enough, every
    split with a positive ratio and no pinned group first gets one (smallest ratio first), then each group
    goes to the split furthest below its share.
    """
    splits = sorted((s for s, r in ratios.items() if r > 0), key=lambda s: (ratios[s], s))
    assignment: dict[str, str] = {}
    for dataset in sorted(groups):
        counts = groups[dataset]
        assigned = {s: 0 for s in splits}
        total = 0
        for group in sorted(counts):
            split = pinned_split(group, pinned or {})
            if split is not None:
                assignment[group] = split
                assigned[split] = assigned.get(split, 0) + counts[group]
                total += counts[group]
        order = sorted((g for g in counts if g not in assignment), key=lambda g: stable_hash([seed, g]))
        empty = [s for s in splits if not assigned[s]]
        for i, group in enumerate(order):
            total += counts[group]
            if len(order) >= len(empty) and i < len(empty):
                split = empty[i]
            else:
                split = max(splits, key=lambda s: (ratios[s] * total - assigned[s], ratios[s]))
            assigned[split] += counts[group]
            assignment[group] = split
    return assignment


class _SplitWriter:
    """Writes one split's shards into a local folder: `shard_rows` rows each, named
    `<split>-NNNNN-of-NNNNN.parquet` from the split's row count known up front, in row groups of
    row groups of at most ROW_GROUP_ROWS rows and ROW_GROUP_AUDIO_BYTES of audio, so the file depends on the
    rows alone, never on how they were handed over. Rows short of a full row group wait for the next write;
    `on_close(split, path, rows)` is called as each shard is finished."""

    def __init__(self, folder: Path, split: str, rows_total: int, shard_rows: int, metadata: dict[bytes, bytes],
                 on_close) -> None:
        self.folder, self.split, self.shard_rows, self.on_close = folder, split, shard_rows, on_close
        self.rows_total, self.shards = rows_total, math.ceil(rows_total / shard_rows)
        self.schema = PUBLISHED_SCHEMA.with_metadata(metadata)
        self.writer: pq.ParquetWriter | None = None
        self.path: Path | None = None
        self.closed = 0  # shards finished
        self.rows_written = 0
        self.rows_in_shard = 0
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.pending_audio_bytes = np.zeros(0, dtype=np.int64)  # per waiting row

    def write(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.pending_rows += table.num_rows
        sizes = pc.binary_length(table["audio"].combine_chunks().field("bytes")).to_numpy(zero_copy_only=False)
        self.pending_audio_bytes = np.concatenate([self.pending_audio_bytes, sizes.astype(np.int64)])
        while (rows := self._group_rows(final=False)):
            self._write_group(rows)

    def close(self) -> None:
        """Write what waits and finish the last shard; CotaforgeError when the rows written are not the rows
        the split was counted to have (the shard names would be wrong)."""
        while (rows := self._group_rows(final=True)):
            self._write_group(rows)
        self._close_shard()
        if self.rows_written != self.rows_total:
            raise CotaforgeError(f"publish wrote {self.rows_written} rows to split {self.split!r} but counted "
                                 f"{self.rows_total} beforehand; run publish again")

    def _group_rows(self, final: bool) -> int:
        """Rows of the next row group when it is complete (or `final`: nothing more comes), else 0."""
        if not self.pending_rows:
            return 0
        limit = min(ROW_GROUP_ROWS, self.shard_rows - self.rows_in_shard)
        audio_bytes = np.cumsum(self.pending_audio_bytes[:limit])
        rows = max(1, min(limit, int(np.searchsorted(audio_bytes, ROW_GROUP_AUDIO_BYTES, side="right"))))
        # Complete when a row is left over (it did not fit) or the group is full; otherwise more may join.
        return rows if final or rows < self.pending_rows or rows == limit else 0

    def _write_group(self, rows: int) -> None:
        table = pa.concat_tables(self.pending) if len(self.pending) > 1 else self.pending[0]
        rest = table.slice(rows)
        self.pending_audio_bytes = self.pending_audio_bytes[rows:]
        if self.writer is None:
            self.path = self.folder / f"{self.split}-{self.closed:05d}-of-{self.shards:05d}.parquet"
            self.writer = pq.ParquetWriter(self.path, self.schema, compression="zstd",
                                           use_dictionary=dictionary_columns(self.schema))
        # One chunk per column: the writer cuts pages at chunk boundaries, which must not depend on the slices.
        self.writer.write_table(table.slice(0, rows).combine_chunks(), row_group_size=rows)
        self.pending, self.pending_rows = ([rest] if rest.num_rows else []), rest.num_rows
        self.rows_in_shard += rows
        self.rows_written += rows
        if self.rows_in_shard >= self.shard_rows:
            self._close_shard()

    def _close_shard(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.on_close(self.split, self.path, self.rows_in_shard)
            self.closed += 1
            self.writer, self.rows_in_shard = None, 0


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _Stats:
    """Statistics of exactly the rows written, so the card reports what the shards hold."""

    def __init__(self) -> None:
        self.rows = Counter()
        self.cells = Counter()  # (class, style)
        self.answers = Counter()  # (question_type, answer key)
        self.split_classes = Counter()  # (split, class)
        self.sources = Counter()
        self.cot_words = Counter()  # histogram bin -> count
        self.cot_words_total = 0
        self.types = Counter()  # question_type -> rows
        self.scene_rows = Counter()  # scene_kind -> rows
        self.scenes = Counter()  # scene_kind -> scenes (clips); a clip's samples are all in its batch's part
        self.twin_rows = 0
        self.example_scenes: dict[str, dict[str, str]] = {}  # scene_kind -> {clip_id: events JSON}, a few each

    def add_scenes(self, table: pa.Table) -> None:
        """Scene counts per kind, twins, and a few scenes (of different kinds first) for the timeline picture.
        `table` is one whole batch: a scene's samples never span two batches."""
        self.twin_rows += int(pc.sum(pc.not_equal(table["twin_of"], "")).as_py() or 0)
        scenes = table.filter(pc.not_equal(table["scene_kind"], ""))
        if not scenes.num_rows:
            return
        kinds, clip_ids = scenes["scene_kind"].to_pylist(), scenes["clip_id"].to_pylist()
        self.scene_rows.update(kinds)
        self.scenes.update(kind for kind, _ in set(zip(kinds, clip_ids)))
        if any(len(self.example_scenes.get(k, {})) < SCENE_EXAMPLES for k in set(kinds)):
            for kind, clip_id, events in zip(kinds, clip_ids, scenes["events"].to_pylist()):
                examples = self.example_scenes.setdefault(kind, {})
                if len(examples) < SCENE_EXAMPLES:
                    examples.setdefault(clip_id, events)

    def scenes_to_draw(self) -> list[tuple[str, str, str]]:
        """(clip_id, kind, events) of SCENE_EXAMPLES scenes, taking the kinds in turn."""
        queues = {k: list(v.items()) for k, v in sorted(self.example_scenes.items())}
        chosen: list[tuple[str, str, str]] = []
        while len(chosen) < SCENE_EXAMPLES and any(queues.values()):
            for kind, queue in queues.items():
                if queue and len(chosen) < SCENE_EXAMPLES:
                    clip_id, events = queue.pop(0)
                    chosen.append((clip_id, kind, events))
        return chosen

    def add(self, table: pa.Table) -> None:
        def counts(columns: list[str]) -> dict[tuple, int]:
            grouped = table.group_by(columns).aggregate([([], "count_all")]).to_pydict()
            return {tuple(grouped[c][i] for c in columns): n for i, n in enumerate(grouped["count_all"])}

        for (split,), n in counts(["split"]).items():
            self.rows[split] += n
        for key, n in counts(["class_label", "prompt_style"]).items():
            self.cells[key] += n
        for (split, cls), n in counts(["split", "class_label"]).items():
            self.split_classes[(split, cls)] += n
        for (source,), n in counts(["source_dataset"]).items():
            self.sources[source] += n
        for (qtype, target, answer), n in counts(["question_type", "target", "answer"]).items():
            self.answers[(qtype, _answer_bucket(qtype, target, answer))] += n
            self.types[qtype] += n
        self.add_scenes(table)
        # Words as separators + 1: the assistant text is single-spaced, and a literal count is cheap.
        text = table["assistant_text"]
        words = (pc.count_substring(text, " ").to_numpy(zero_copy_only=False)
                 + pc.count_substring(text, "\n").to_numpy(zero_copy_only=False) + 1)
        self.cot_words_total += int(words.sum())
        bins = np.minimum(words // 25 * 25, COT_LENGTH_BINS[-1])
        for value, n in zip(*np.unique(bins, return_counts=True)):
            self.cot_words[int(value)] += int(n)


def _answer_bucket(question_type: str, target: str, answer: str) -> str:
    """How the card tabulates an answer: letters, yes/no, counts and sound names as they are; open start
    times by whole second; the free answers of single-clip questions as '-'."""
    if question_type in ("multiple_choice", "yes_no"):
        return answer
    if not target.startswith("scene."):
        return "-"
    if target == "scene.onset" and not (len(answer) == 1 and answer.isupper()):
        try:
            second = int(float(answer))
        except ValueError:
            return answer
        return f"{second}-{second + 1} s"
    return answer


def _user_texts(table: pa.Table) -> pa.Array:
    """`render_user_text` for a whole table at once: the question, then 'A. option' lines."""
    options = table["options"].combine_chunks()
    flat = pc.list_flatten(options)
    if len(flat):
        parents = pc.list_parent_indices(options).to_numpy()
        starts = options.offsets.to_numpy()[:-1][parents]
        letters = pa.array([f"{option_letter(i)}. " for i in (np.arange(len(flat)) - starts)], pa.string())
        lettered = pc.binary_join_element_wise(letters, flat, "")
        lines = pa.ListArray.from_arrays(options.offsets, lettered)
        joined = pc.binary_join(lines, "\n")
    else:
        joined = pa.array([""] * len(options), pa.string())
    has_options = pc.greater(pc.list_value_length(options), 0)
    with_options = pc.binary_join_element_wise(table["question"], joined, "\n")
    return pc.if_else(has_options, with_options, table["question"]).combine_chunks()


def _messages(table: pa.Table) -> pa.Array:
    """System, user and assistant turns per row, built column-wise (no per-row Python objects)."""
    n = table.num_rows
    user = _user_texts(table)
    assistant = table["assistant_text"].combine_chunks()
    # Interleave [system, user_i, assistant_i] for every row, then cut into lists of three.
    take = np.empty(3 * n, dtype=np.int64)
    take[0::3], take[1::3], take[2::3] = 0, 1 + np.arange(n), 1 + n + np.arange(n)
    contents = pa.concat_arrays([pa.array([SYSTEM_PROMPT], pa.string()), user, assistant]).take(pa.array(take))
    roles = pa.DictionaryArray.from_arrays(pa.array(np.tile([0, 1, 2], n), pa.int32()),
                                           pa.array(["system", "user", "assistant"])).cast(pa.string())
    turns = pa.StructArray.from_arrays([roles, contents], names=["role", "content"])
    return pa.ListArray.from_arrays(pa.array(np.arange(0, 3 * n + 1, 3), pa.int32()), turns)


def _with_splits(table: pa.Table, split_of: dict[str, str]) -> pa.Table:
    return table.set_column(table.schema.get_field_index("split"), "split",
                            pa.array([split_of[g] for g in table["group_id"].to_pylist()], pa.string()))


def _published_table(rows: pa.Table, audio: pa.ChunkedArray, audio_rows: pa.Array) -> pa.Table:
    """Published rows: `rows` (samples with their split) with their audio (`audio.take(audio_rows)`, one
    clip's WAV per sample) and messages."""
    audio_bytes = audio.take(audio_rows).combine_chunks()
    audio_paths = pc.binary_join_element_wise(rows["clip_id"], ".wav", "").combine_chunks()
    audio_column = pa.StructArray.from_arrays([audio_bytes, audio_paths], fields=list(AUDIO_TYPE))
    table = rows.append_column("audio", audio_column).append_column("messages", _messages(rows))
    return table.select(PUBLISHED_SCHEMA.names).cast(PUBLISHED_SCHEMA)


def _slices(audio_sizes: np.ndarray) -> list[tuple[int, int]]:
    """(offset, length) runs of rows with at most SLICE_ROWS rows and SLICE_AUDIO_BYTES of audio each."""
    slices, start, total = [], 0, 0
    for i, size in enumerate(audio_sizes.tolist()):
        if i > start and (i - start >= SLICE_ROWS or total + size > SLICE_AUDIO_BYTES):
            slices.append((start, i - start))
            start, total = i, 0
        total += size
    if start < len(audio_sizes):
        slices.append((start, len(audio_sizes) - start))
    return slices


def dataset_dir(cfg: RunConfig) -> Path:
    return cfg.run.out_dir / "datasets" / cfg.dataset_name / cfg.publish.version


def publish_fingerprint(run: RunDir, cfg: RunConfig, extra: object = None) -> str:
    upstream = [run.part_fingerprint("balance", b) for b in range(run.batch_count())]
    publish_cfg = cfg.to_dict()["publish"]
    publish_cfg.pop("push_to_hub")  # pushing does not change the dataset
    return fingerprint(STAGE, STAGE_VERSION, stable_hash(publish_cfg), cfg.run.seed, cfg.dataset_name,
                       stable_hash(upstream), extra)


def run_publish(run: RunDir, cfg: RunConfig) -> StageReport:
    """Write the dataset version (skipped when the same inputs already made it); push it if configured."""
    from cotaforge.decisions import decisions_fingerprint, load_decisions

    started = time.perf_counter()
    target = dataset_dir(cfg)
    if cfg.publish.push_to_hub and is_remote(target):
        raise ConfigError(f"publish.push_to_hub uploads from a local folder, and the dataset goes to {target}; "
                          "publish to a local --out to push, or drop --push-to-hub")
    recovered = recover_dataset(target) + [str(p) for p in run.clear_stale_temporaries()]
    review = load_decisions(run, cfg)
    decisions = review.outcomes
    # A new review decision republishes; without any the fingerprint is what it was before review existed.
    fp = publish_fingerprint(run, cfg, decisions_fingerprint(decisions) if decisions else None)
    manifest_file = target / "manifest.json"
    if manifest_file.exists() and json.loads(manifest_file.read_text(encoding="utf-8")).get("fingerprint") == fp:
        manifest = ShardManifest.model_validate_json(manifest_file.read_text(encoding="utf-8"))
        report = StageReport(stage=STAGE, rows_in=sum(manifest.rows.values()), rows_out=sum(manifest.rows.values()),
                             parts_skipped=1, notes=[f"dataset unchanged at {target}"])
    else:
        report = _write_dataset(run, cfg, target, fp, started, decisions)
    # A decision publish cannot apply (say, one naming a revision that does not exist) is named, never fatal.
    report.notes += review.skipped
    if recovered:
        report.notes.append("cleared what a stopped publish left: " + "; ".join(recovered))
    if cfg.publish.push_to_hub:
        push_to_hub(target, cfg.publish.push_to_hub, cfg.publish.private)
        report.notes.append(f"pushed to the Hub as {cfg.publish.push_to_hub}")
    return report


def _group_counts(run: RunDir) -> dict[str, dict[str, int]]:
    groups: dict[str, Counter] = {}
    for batch in range(run.batch_count()):
        table = run.read_part("balance", batch, ["source_dataset", "group_id"])
        for dataset, group in zip(table["source_dataset"].to_pylist(), table["group_id"].to_pylist()):
            groups.setdefault(dataset, Counter())[group] += 1
    return {d: dict(c) for d, c in groups.items()}


def _split_rows(run: RunDir, split_of: dict[str, str], decisions: dict | None) -> Counter:
    """Rows each split will get (review-rejected rows left out): fixes the shard names before writing."""
    rows: Counter = Counter()
    for batch in range(run.batch_count()):
        table = run.read_part("balance", batch, ["sample_id", "group_id"])
        for sample_id, group in zip(table["sample_id"].to_pylist(), table["group_id"].to_pylist()):
            outcome = decisions.get(sample_id) if decisions else None
            if outcome is None or outcome.keep:
                rows[split_of[group]] += 1
    return rows


class _LocalVersion:
    """A version built in a temporary folder beside `target` and renamed into place when complete."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.folder = target.parent / f".{target.name}.tmp-{owner_tag()}"
        (self.folder / "data").mkdir(parents=True)

    def shard_done(self, path: Path) -> None:
        """A shard is finished in `folder/data`: nothing more to do until the whole version is."""

    def finish(self, manifest_json: str) -> None:
        (self.folder / "manifest.json").write_text(manifest_json, encoding="utf-8")
        _swap_into_place(self.folder, self.target)

    def close(self) -> None:
        if self.folder.exists():
            shutil.rmtree(self.folder, ignore_errors=True)


class _RemoteVersion:
    """A version on an object store: files are built in a local folder and uploaded one by one under their
    final keys, `manifest.json` last (see the module's docstring)."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.folder = Path(tempfile.mkdtemp(prefix=".cotaforge-publish-"))
        (self.folder / "data").mkdir()
        self.uploaded: set[str] = set()
        with storage_errors(target):
            # The replaced version stops being complete before any of its objects is overwritten.
            for name in ("manifest.json", "README.md"):
                if (target / name).exists():
                    (target / name).unlink()

    def _upload(self, local: Path) -> None:
        relative = local.relative_to(self.folder).as_posix()
        put_file(local, self.target / relative)
        self.uploaded.add(relative)

    def shard_done(self, path: Path) -> None:
        self._upload(path)
        path.unlink()

    def finish(self, manifest_json: str) -> None:
        for path in sorted(self.folder.rglob("*")):  # the plots and the card
            if path.is_file():
                self._upload(path)
        (self.folder / "manifest.json").write_text(manifest_json, encoding="utf-8")
        self._upload(self.folder / "manifest.json")
        with storage_errors(self.target):
            fs, root = self.target.fs, self.target.path.rstrip("/")
            stale = [key for key in fs.find(root) if key[len(root) + 1:] not in self.uploaded]
            if stale:
                fs.rm(stale)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _write_dataset(run: RunDir, cfg: RunConfig, target: Path, fp: str, started: float,
                   decisions: dict | None = None) -> StageReport:
    """Write the version; `decisions` (sample id -> review outcome) drop rejected rows and apply edits."""
    from cotaforge.decisions import apply_decisions
    from cotaforge.stages.compose import read_splits  # compose imports this module

    # The splits compose decided before building scenes win; groups it never saw are assigned here.
    split_of = {**assign_splits(_group_counts(run), cfg.publish.splits, cfg.run.seed, cfg.publish.group_splits),
                **read_splits(run)}
    split_rows = _split_rows(run, split_of, decisions)
    version = _RemoteVersion(target) if is_remote(target) else _LocalVersion(target)
    metadata = {b"huggingface": json.dumps({"info": {"features": hf_features()}}).encode()}
    shards: dict[str, list[ShardInfo]] = {s: [] for s in cfg.publish.splits}

    def shard_closed(split: str, path: Path, rows: int) -> None:
        shards[split].append(ShardInfo(path=f"data/{path.name}", split=split, rows=rows,
                                       bytes=path.stat().st_size, sha256=_sha256(path)))
        version.shard_done(path)

    writers = {s: _SplitWriter(version.folder / "data", s, split_rows.get(s, 0), cfg.publish.shard_rows, metadata,
                               shard_closed) for s in cfg.publish.splits}
    stats = _Stats()
    review_rejects: list[Rejection] = []
    try:
        for batch in range(run.batch_count()):
            table = run.read_part("balance", batch)
            if decisions:
                review_rejects += _review_rejects(table, decisions)
                table, _ = apply_decisions(table, decisions)
                table = _unlink_rejected_twins(table, decisions)
            if table.num_rows == 0:
                continue
            table = _with_splits(table, split_of)
            stats.add(table)
            _write_batch(table, read_clip_audio(run, batch), writers)
            progress.advance(STAGE, table.num_rows)
        for writer in writers.values():
            writer.close()
        manifest = ShardManifest(name=cfg.dataset_name, version=cfg.publish.version, fingerprint=fp,
                                 created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                 rows={s: stats.rows.get(s, 0) for s in cfg.publish.splits},
                                 shards=[shard for s in cfg.publish.splits for shard in shards[s]])
        _write_plots(version.folder / "plots", stats)
        (version.folder / "README.md").write_text(dataset_card(cfg, manifest, stats, run), encoding="utf-8")
        version.finish(manifest.model_dump_json(indent=1))
    finally:
        for writer in writers.values():
            if writer.writer is not None:
                writer.writer.close()
        version.close()
    # Rows the annotators rejected are listed like every other dropped row.
    write_rejects(run.rejects_path(STAGE, "review"), review_rejects)
    total = sum(stats.rows.values())
    return StageReport(stage=STAGE, rows_in=total + len(review_rejects), rows_out=total, parts_done=1,
                       rejected={"review_rejected": len(review_rejects)} if review_rejects else {},
                       seconds=time.perf_counter() - started,
                       notes=[f"dataset at {target}: " + ", ".join(f"{s} {stats.rows.get(s, 0)}" for s in cfg.publish.splits)])


def _write_batch(table: pa.Table, ingest: pa.Table, writers: dict[str, _SplitWriter]) -> None:
    """One batch's samples (with their splits) to the split writers, built a slice at a time so that only
    a slice's copies of the audio exist at once."""
    row_of = {clip_id: i for i, clip_id in enumerate(ingest["clip_id"].to_pylist())}
    audio = ingest["audio_wav"]
    audio_sizes = pc.binary_length(audio).to_numpy()
    audio_rows = np.array([row_of[c] for c in table["clip_id"].to_pylist()], dtype=np.int64)
    splits = table["split"].to_numpy(zero_copy_only=False)
    for split, writer in writers.items():
        # Rows are taken a slice at a time (no whole-split copy of the batch's text), in the batch's order.
        picked = np.flatnonzero(splits == split)
        for offset, length in _slices(audio_sizes[audio_rows[picked]]):
            chosen = picked[offset:offset + length]
            writer.write(_published_table(table.take(pa.array(chosen)), audio, pa.array(audio_rows[chosen])))


def dataset_files(version: Path | str) -> dict[str, list[str]]:
    """The shard files of each split of a complete published version (local folder or URL), from its
    `manifest.json`, e.g. for `datasets.load_dataset("parquet", data_files=...)`. CotaforgeError when the
    version has no `manifest.json`: it does not exist, or its publish has not finished (or was stopped)."""
    folder = location(version)
    with storage_errors(folder):
        if not (folder / "manifest.json").is_file():
            raise CotaforgeError(f"{folder} has no manifest.json: it is not a complete published version (a publish "
                                 "still running or stopped before the end); run `cotaforge publish` to finish it")
        manifest = ShardManifest.model_validate_json((folder / "manifest.json").read_text(encoding="utf-8"))
    files: dict[str, list[str]] = {}
    for shard in manifest.shards:
        files.setdefault(shard.split, []).append(str(folder / shard.path))
    return files


def _unlink_rejected_twins(table: pa.Table, decisions: dict) -> pa.Table:
    """Clear `twin_of` where review rejected the twin, so no published row names a row that is not there."""
    rejected = {sid for sid, outcome in decisions.items() if not outcome.keep}
    twins = table["twin_of"].to_pylist()
    if not rejected or not any(t in rejected for t in twins):
        return table
    cleared = pa.array(["" if t in rejected else t for t in twins], pa.string())
    return table.set_column(table.schema.get_field_index("twin_of"), "twin_of", cleared)


def _review_rejects(table: pa.Table, decisions: dict) -> list[Rejection]:
    rejects = []
    for sample_id, clip_id in zip(table["sample_id"].to_pylist(), table["clip_id"].to_pylist()):
        outcome = decisions.get(sample_id)
        if outcome is not None and not outcome.keep:
            review = json.loads(outcome.review)
            why = ", ".join(review.get("reasons", [])) or "no reason given"
            rejects.append(Rejection(stage=STAGE, reason="review_rejected", reasons=["review_rejected"],
                                     sample_id=sample_id, clip_id=clip_id,
                                     message=f"sample {sample_id} rejected in review by "
                                             f"{', '.join(outcome.rejected_by)} ({why})"))
    return rejects


def _swap_into_place(work: Path, target: Path) -> None:
    """Rename the finished `work` folder to `target`, moving an existing version aside first.

    The aside name shares the work folder's owner tag (`.v1.tmp-<tag>` -> `.v1.old-<tag>`), which is what
    lets `recover_dataset` finish a swap that was killed between the two renames.
    """
    tag = work.name.split(".tmp-", 1)[1]
    old = target.parent / f".{target.name}.old-{tag}"
    if target.exists():
        target.rename(old)
    work.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def recover_dataset(target: Path) -> list[str]:
    """Repair what a killed publish left beside `target` (`<datasets>/<name>/<version>`); what it did, in words.

    - `.<version>.old-<tag>` with no `<version>`: killed between the swap's renames. The new version
      (`.<version>.tmp-<tag>`) was complete, so it is moved into place; without it the old one is restored.
    - `.<version>.old-<tag>` beside `<version>`: killed before the old version was deleted; it is deleted.
    - `.<version>.tmp-<tag>` otherwise: a version being built; deleted.
    Folders whose writer is still alive (same host, live pid) are left alone.
    """
    parent = target.parent
    if is_remote(target) or not parent.is_dir():  # an object store's version is never half-renamed
        return []
    done = []
    prefix = f".{target.name}."
    for old in sorted(parent.glob(f"{prefix}old-*")):
        tag = old.name[len(prefix) + len("old-"):]
        if not old.is_dir() or _owner_live(tag):
            continue
        work = parent / f"{prefix}tmp-{tag}"
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            done.append(f"removed {old.name}, the version replaced by {target.name}")
        elif (work / "manifest.json").is_file() and (work / "README.md").is_file():
            work.rename(target)
            shutil.rmtree(old, ignore_errors=True)
            done.append(f"completed the swap of {target.name} from {work.name}")
        else:
            old.rename(target)
            done.append(f"restored {target.name} from {old.name}")
    for work in sorted(parent.glob(f"{prefix}tmp-*")):
        if work.is_dir() and not _owner_live(work.name[len(prefix) + len("tmp-"):]):
            shutil.rmtree(work, ignore_errors=True)
            done.append(f"removed the unfinished {work.name}")
    return done


def _owner_live(tag: str) -> bool:
    """Whether a folder's writer may still be at work; a tag that names no owner (8 hex digits, from before
    tags named one) is taken as a dead writer's."""
    return owner_alive(tag) if tag.count("-") >= 2 else False


def _md(text: object) -> str:
    """Text from labels or the teacher, made inert in Markdown and HTML."""
    return html.escape(str(text)).replace("|", "\\|").replace("\n", " ")


def _write_plots(folder: Path, stats: _Stats) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    classes = sorted({c for c, _ in stats.cells})
    styles = sorted({s for _, s in stats.cells})
    grid = np.array([[stats.cells.get((c, s), 0) for s in styles] for c in classes]) if classes else np.zeros((1, 1))
    fig, ax = plt.subplots(figsize=(2.2 + 1.3 * max(len(styles), 1), 1.2 + 0.32 * max(len(classes), 1)))
    image = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(styles)), styles)
    ax.set_yticks(range(len(classes)), classes)
    for (i, j), value in np.ndenumerate(grid):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if value < grid.max() * 0.6 else "black",
                fontsize=8)
    ax.set_title("samples per (class, prompt style)")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(folder / "class_style_heatmap.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.2))
    bins = sorted(stats.cot_words)
    ax.bar(bins, [stats.cot_words[b] for b in bins], width=22, align="edge")
    ax.set_xlabel("chain-of-thought length (words of assistant text)")
    ax.set_ylabel("samples")
    ax.set_title("CoT length")
    fig.tight_layout()
    fig.savefig(folder / "cot_length_hist.png", dpi=100)
    plt.close(fig)
    if stats.example_scenes:
        _plot_timelines(folder / "scene_timelines.png", stats.scenes_to_draw(), plt)


def _plot_timelines(path: Path, scenes: list[tuple[str, str, str]], plt) -> None:
    """One panel per scene: each sound a bar from its onset to its offset on its class's row, labeled with its
    level, so a reader sees what the count, order, duration, loudness and timing questions were asked about."""
    fig, axes = plt.subplots(len(scenes), 1, figsize=(7.5, 0.9 + 1.25 * len(scenes)), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, (clip_id, kind, events_json) in zip(axes[:, 0], scenes):
        events = json.loads(events_json)
        classes = list(dict.fromkeys(e["class_label"] for e in events))
        for e in events:
            row = classes.index(e["class_label"])
            ax.broken_barh([(e["onset_s"], e["offset_s"] - e["onset_s"])], (row - 0.35, 0.7),
                           color=colors(row % 10), alpha=0.85)
            ax.text(e["onset_s"], row, f" {e['level_dbfs']:.0f} dBFS", va="center", fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set_ylim(-0.6, len(classes) - 0.4)
        ax.invert_yaxis()
        ax.set_title(f"{kind} scene {clip_id[:8]}", fontsize=9, loc="left")
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def dataset_card(cfg: RunConfig, manifest: ShardManifest, stats: _Stats, run: RunDir) -> str:
    splits = [s for s in cfg.publish.splits if manifest.rows.get(s)]
    config_block = "\n".join(f"  - split: {s}\n    path: data/{s}-*.parquet" for s in splits)
    total = sum(manifest.rows.values())
    classes = sorted({c for c, _ in stats.cells})
    styles = sorted({s for _, s in stats.cells})
    lines = [
        "---",
        f"license: {cfg.publish.license}",
        f"pretty_name: {json.dumps(cfg.dataset_name)}",
        "task_categories:\n- audio-classification\n- question-answering",
        "tags:\n- audio\n- chain-of-thought\n- cotaforge",
        "configs:\n- config_name: default\n  data_files:\n" + config_block,
        "---",
        f"# {_md(cfg.dataset_name)} ({_md(cfg.publish.version)})",
        "",
        f"Chain-of-thought audio question-answer samples made by cotaforge {__version__} (schema "
        f"{SCHEMA_VERSION}). Each row holds a 16 kHz mono clip, a question (with lettered options for multiple "
        "choice), and an answer in the tagged format `<THINK><PLANNING>…</PLANNING><CAPTION>…</CAPTION>"
        "<REASONING>…</REASONING><SUMMARY>…</SUMMARY></THINK><RESPONSE>…</RESPONSE>`. Answers were fixed from "
        "the source labels and measured acoustic facts before the reasoning was written, and every row passed "
        "validation.",
        "",
        "```python",
        "from datasets import load_dataset",
        'ds = load_dataset("parquet", data_dir="{path to this folder}/data")',
        "```",
        "",
        "## Splits",
        "Splits are by group (speaker, or clip where there is none): no group appears in two splits.",
        "",
        "| split | rows |", "| --- | ---: |",
        *(f"| {s} | {manifest.rows.get(s, 0)} |" for s in cfg.publish.splits),
        f"| total | {total} |",
        "",
        "## Balance: samples per (class, prompt style)",
        "![class by prompt style](plots/class_style_heatmap.png)",
        "",
        "| class | " + " | ".join(_md(s) for s in styles) + " |",
        "| --- |" + " ---: |" * len(styles),
        *(f"| {_md(c)} | " + " | ".join(str(stats.cells.get((c, s), 0)) for s in styles) + " |" for c in classes),
        "",
        "## Questions per type",
        "| question type | rows |", "| --- | ---: |",
        *(f"| {_md(q)} | {n} |" for q, n in sorted(stats.types.items())),
        "",
        "## Question types and answers",
        "| question type | answer | rows |", "| --- | --- | ---: |",
        *(f"| {_md(q)} | {_md(a)} | {n} |" for (q, a), n in sorted(stats.answers.items())),
        "",
        *_scene_section(stats),
        "## Chain-of-thought length",
        f"Mean {stats.cot_words_total / max(total, 1):.0f} words per answer.",
        "![CoT length histogram](plots/cot_length_hist.png)",
        "",
        "## Sources",
        "| source dataset | rows |", "| --- | ---: |",
        *(f"| {_md(s)} | {n} |" for s, n in sorted(stats.sources.items())),
        "",
    ]
    if cfg.publish.attribution:
        lines += ["## License and attribution", _md(cfg.publish.attribution), ""]
    lines += ["## How it was made", _run_summary_markdown(run),
              "", f"Shards, row counts and sha256 are in `manifest.json`; fingerprint `{manifest.fingerprint}`.", ""]
    return "\n".join(lines)


def _scene_section(stats: _Stats) -> list[str]:
    """The card's scenes: how many of each kind, their rows, twins, and the timeline picture."""
    if not stats.scenes:
        return []
    return [
        "## Scenes",
        "Scenes are built from the labeled clips (sequences, repeats, mixtures) or are recordings with timed "
        "events; every answer about them is derived from their timeline (column `events`). A counterfactual "
        f"twin (column `twin_of`) is asked the same question with a different answer: {stats.twin_rows} rows.",
        "",
        "| scene kind | scenes | rows |", "| --- | ---: | ---: |",
        *(f"| {_md(k)} | {stats.scenes[k]} | {stats.scene_rows[k]} |" for k in sorted(stats.scenes)),
        "",
        "![timelines of a few scenes](plots/scene_timelines.png)",
        "",
    ]


def _run_summary_markdown(run: RunDir) -> str:
    rejects = run.rejects()
    counts = Counter(zip(rejects["stage"].to_pylist(), rejects["reason"].to_pylist()))
    config = json.loads(json.dumps(_safe_config(run)))
    lines = [f"Teacher: `{_md(config.get('teacher', {}).get('backend', '?'))}`; caption mode "
             f"`{_md(config.get('caption', {}).get('mode', '?'))}`; question bank "
             f"`{_md(config.get('expand', {}).get('question_bank', '?'))}`; seed {config.get('run', {}).get('seed', 0)}.",
             "", "Rows dropped on the way (every one is listed in the run's `rejects/`):", "",
             "| stage | reason | rows |", "| --- | --- | ---: |"]
    lines += [f"| {_md(s)} | {_md(r)} | {n} |" for (s, r), n in sorted(counts.items())] or ["| - | none | 0 |"]
    return "\n".join(lines)


def _safe_config(run: RunDir) -> dict:
    import yaml

    path = run.root / "config.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else {}


def push_to_hub(folder: Path, repo_id: str, private: bool) -> None:
    """Upload a published version as a Hub dataset repo (token from HF_TOKEN or `hf auth login`)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset",
                      commit_message=f"cotaforge {__version__}: {folder.name}")
