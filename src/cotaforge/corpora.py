"""Presets for published corpora: how each one's own metadata file maps onto cotaforge's manifest columns.

A preset is data, not code: the columns that identify the corpus's metadata file, a path template built from
its columns, the label, group and id columns, and the folders its audio usually sits in. `--preset NAME`
picks one; a manifest without `path` and `label` columns is matched against the presets' headers instead
(the most specific match wins, and the run report notes the choice). Every key can still be overridden by
a flag or config key (`--label-column`, `--group-column`, `--path-template`, `--audio-root` ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Preset:
    name: str
    source: str  # where the layout is documented
    header: tuple[str, ...]  # columns whose presence identifies the corpus's metadata file
    path_template: str  # `str.format` template over the row's columns, relative to the audio root
    label_column: str
    label_sep: str = ";"
    group_column: str | None = None  # None: each clip (or each recording, for segments) is its own group
    id_column: str | None = None
    start_column: str | None = None  # segment window inside a longer file, seconds
    end_column: str | None = None
    onset_column: str | None = None  # one row per timestamped event
    offset_column: str | None = None
    label_names: str | None = None  # file name of the id -> display name table, looked up beside the manifest
    # Candidate audio roots relative to the manifest's folder, tried in order; the first under which the
    # first rows' files exist is used. "<mirror>" is the manifest's folder with its `metadata` part
    # replaced by `audio` (DESED keeps metadata/validation/x.tsv beside audio/validation/).
    roots: tuple[str, ...] = (".",)
    # Where the metadata file sits in the corpus as distributed: a manifest that is the corpus's root folder
    # is read through it.
    metadata_file: str | None = None
    # Columns that describe where a clip came from (folds, source ids, times): kept in the clip's metadata
    # for provenance, never asked about in questions.
    provenance: tuple[str, ...] = field(default_factory=tuple)


PRESETS: tuple[Preset, ...] = (
    # ESC-50 (github.com/karolpiczak/ESC-50, README "Repository content"): meta/esc50.csv with
    # filename, fold, target, category, esc10, src_file, take; audio in audio/*.wav. Clips cut from one
    # Freesound recording share src_file and must stay in one split; `--group-column fold` keeps whole folds
    # together instead, reproducing the corpus's 5-fold cross-validation.
    Preset("esc50", "ESC-50 README, meta/esc50.csv",
           header=("filename", "fold", "target", "category", "esc10", "src_file", "take"),
           path_template="audio/{filename}", label_column="category", group_column="src_file",
           id_column="filename", roots=("..", "."), provenance=("fold", "target", "esc10", "src_file", "take"),
           metadata_file="meta/esc50.csv"),
    # UrbanSound8K (urbansounddataset.weebly.com/urbansound8k.html): metadata/UrbanSound8K.csv with
    # slice_file_name, fsID, start, end, salience, fold, classID, class; audio in audio/fold<N>/. Slices
    # are files of their own: start/end locate them in the Freesound recording fsID (provenance only).
    Preset("urbansound8k", "UrbanSound8K README, metadata/UrbanSound8K.csv",
           header=("slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"),
           path_template="audio/fold{fold}/{slice_file_name}", label_column="class", group_column="fsID",
           id_column="slice_file_name", roots=("..", "."),
           provenance=("fsID", "start", "end", "salience", "fold", "classID"),
           metadata_file="metadata/UrbanSound8K.csv"),
    # FSD50K (zenodo.org/record/4060432, README "Ground truth"): FSD50K.ground_truth/dev.csv with
    # fname, labels, mids, split and eval.csv with fname, labels, mids; labels comma-separated; audio in
    # FSD50K.dev_audio/<fname>.wav and FSD50K.eval_audio/<fname>.wav beside the ground-truth folder.
    Preset("fsd50k", "FSD50K README, FSD50K.ground_truth/dev.csv",
           header=("fname", "labels", "mids", "split"), path_template="FSD50K.dev_audio/{fname}.wav",
           label_column="labels", label_sep=",", id_column="fname", roots=("..", "."), provenance=("mids", "split"),
           metadata_file="FSD50K.ground_truth/dev.csv"),
    Preset("fsd50k", "FSD50K README, FSD50K.ground_truth/eval.csv",
           header=("fname", "labels", "mids"), path_template="FSD50K.eval_audio/{fname}.wav",
           label_column="labels", label_sep=",", id_column="fname", roots=("..", "."), provenance=("mids",),
           metadata_file="FSD50K.ground_truth/eval.csv"),
    # AudioSet (research.google.com/audioset/download.html): *_segments.csv, three '#' comment lines, the
    # last naming YTID, start_seconds, end_seconds, positive_labels (label ids, comma-separated, quoted);
    # class_labels_indices.csv (index, mid, display_name) names them. The user holds the full-length audio
    # of each video as <YTID>.wav beside the CSV (override with --path-template, e.g. 'audio/{YTID}.flac',
    # and --audio-root); each row's window is cut out of it.
    Preset("audioset", "AudioSet download page, *_segments.csv and class_labels_indices.csv",
           header=("YTID", "start_seconds", "end_seconds", "positive_labels"), path_template="{YTID}.wav",
           label_column="positive_labels", label_sep=",", id_column="YTID", group_column="YTID",
           start_column="start_seconds", end_column="end_seconds", label_names="class_labels_indices.csv",
           roots=(".", "audio", ".."), provenance=("start_seconds", "end_seconds")),
    # Hugging Face AudioFolder (huggingface.co/docs/datasets/audio_load, "AudioFolder with metadata"):
    # metadata.csv / metadata.jsonl beside the audio, with a file_name column relative to it.
    Preset("audiofolder", "Hugging Face datasets docs, AudioFolder with metadata",
           header=("file_name",), path_template="{file_name}", label_column="label"),
    # DESED / DCASE sound event detection (github.com/turpaultn/DESED): tab-separated
    # filename, onset, offset, event_label, one row per event; metadata/<set>/<set>.tsv beside audio/<set>/.
    Preset("strong-tsv", "DESED README, metadata/*.tsv with strong labels",
           header=("filename", "onset", "offset", "event_label"), path_template="{filename}",
           label_column="event_label", onset_column="onset", offset_column="offset",
           roots=(".", "<mirror>", "audio", "..")),
)

PRESET_NAMES: tuple[str, ...] = tuple(dict.fromkeys(p.name for p in PRESETS))


def presets_named(name: str) -> list[Preset]:
    """The variants of one preset (FSD50K has one per metadata file); ValueError for an unknown name."""
    found = [p for p in PRESETS if p.name == name]
    if not found:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
    return found


def corpus_metadata_files(folder: Path, name: str | None = None) -> list[Path]:
    """The metadata files of a corpus whose root folder this is (FSD50K has two), for `name` or any preset."""
    presets = presets_named(name) if name else PRESETS
    return [folder / p.metadata_file for p in presets if p.metadata_file and (folder / p.metadata_file).is_file()]


def match_preset(columns: list[str], name: str | None = None) -> Preset | None:
    """The preset whose header this table has, most specific first; among `name`'s variants when given.

    With a name and no variant matching exactly, the variant sharing the most columns is returned, so the
    mapping check can name what is missing.
    """
    present = set(columns)
    candidates = presets_named(name) if name else list(PRESETS)
    full = [p for p in candidates if set(p.header) <= present]
    if full:
        return max(full, key=lambda p: len(p.header))
    if name:
        return max(candidates, key=lambda p: len(set(p.header) & present))
    return None
