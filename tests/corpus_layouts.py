"""Tiny corpora in the exact metadata layouts that ESC-50, UrbanSound8K, FSD50K, AudioSet, Hugging Face's
AudioFolder and DESED publish, with audio generated here (tones and noise; nothing downloaded).

Every clip's audio is distinct (its own pitch and noise seed), so content hashes never collide, and each
builder returns what a correct reading must give, for the tests to compare against.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import soundfile as sf


def tone(seconds: float, rate: int, freq_hz: float, seed: int, level: float = 0.3) -> np.ndarray:
    """A tone with a little noise, faded in and out (no clicks), distinct per seed."""
    t = np.arange(int(round(seconds * rate))) / rate
    rng = np.random.default_rng(seed)
    wave = level * np.sin(2 * np.pi * freq_hz * t) + 0.01 * rng.standard_normal(len(t))
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.01) if len(t) > 1 else np.ones(len(t))
    return (wave * fade).astype(np.float32)


def write_csv(path: Path, header: list[str], rows: list[list], delimiter: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def esc50(root: Path) -> tuple[Path, dict[str, tuple[str, str]]]:
    """ESC-50-master/meta/esc50.csv + audio/{FOLD}-{CLIP_ID}-{TAKE}-{TARGET}.wav (44.1 kHz mono).

    3 classes x 4 source recordings x 2 takes; returns the manifest and {filename: (category, src_file)}."""
    base = root / "ESC-50-master"
    classes = [("dog", 0, 220.0), ("rooster", 1, 440.0), ("chirping_birds", 14, 880.0)]
    rows, expected = [], {}
    seed = 0
    for category, target, freq in classes:
        for source in range(4):
            src_file = f"{100000 + target * 10 + source}"
            fold = source % 5 + 1
            for take in "AB":
                seed += 1
                filename = f"{fold}-{src_file}-{take}-{target}.wav"
                (base / "audio").mkdir(parents=True, exist_ok=True)
                sf.write(base / "audio" / filename, tone(1.0, 44100, freq + seed, seed), 44100, subtype="PCM_16")
                rows.append([filename, fold, target, category, "False", src_file, take])
                expected[filename] = (category, src_file)
    manifest = write_csv(base / "meta" / "esc50.csv",
                         ["filename", "fold", "target", "category", "esc10", "src_file", "take"], rows)
    return manifest, expected


def urbansound8k(root: Path) -> tuple[Path, dict[str, tuple[str, str]]]:
    """UrbanSound8K/metadata/UrbanSound8K.csv + audio/fold<N>/[fsID]-[classID]-[occurrenceID]-[sliceID].wav.

    Returns the manifest and {slice_file_name: (class, fsID)}."""
    base = root / "UrbanSound8K"
    classes = [("dog_bark", 3, 300.0), ("siren", 8, 700.0), ("car_horn", 1, 1200.0)]
    rows, expected = [], {}
    seed = 100
    for name, class_id, freq in classes:
        for recording in range(4):
            fs_id = 7000 + class_id * 100 + recording
            fold = recording % 3 + 1
            for slice_id in range(2):
                seed += 1
                slice_file = f"{fs_id}-{class_id}-0-{slice_id}.wav"
                folder = base / "audio" / f"fold{fold}"
                folder.mkdir(parents=True, exist_ok=True)
                sf.write(folder / slice_file, tone(0.8, 22050, freq + seed, seed), 22050, subtype="PCM_16")
                start = 4.0 * slice_id + 1.5
                rows.append([slice_file, fs_id, f"{start:.6f}", f"{start + 4.0:.6f}", 1 + slice_id % 2, fold,
                             class_id, name])
                expected[slice_file] = (name, str(fs_id))
    manifest = write_csv(base / "metadata" / "UrbanSound8K.csv",
                         ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"], rows)
    return manifest, expected


FSD_LABELS = [("Bark,Dog,Domestic_animals_and_pets,Animal", "/m/05tny_,/m/0bt9lr,/m/068hy,/m/0jbk", 320.0),
              ("Electric_guitar,Guitar,Plucked_string_instrument,Music", "/m/02sgy,/m/0342h,/m/0fx80y,/m/04rlf", 660.0),
              ("Rain,Water", "/m/06mb1,/m/0838f", 1500.0)]


def fsd50k(root: Path) -> tuple[Path, Path, dict[str, list[str]]]:
    """FSD50K.ground_truth/dev.csv (fname, labels, mids, split) and eval.csv (fname, labels, mids), audio in
    FSD50K.dev_audio/<fname>.wav and FSD50K.eval_audio/<fname>.wav. Returns both manifests and
    {fname: labels}."""
    base = root / "FSD50K"
    dev, evaluation, expected = [], [], {}
    seed = 200
    for index, (labels, mids, freq) in enumerate(FSD_LABELS):
        for n in range(4):
            seed += 1
            fname = str(10000 + index * 10 + n)
            folder = base / "FSD50K.dev_audio"
            folder.mkdir(parents=True, exist_ok=True)
            sf.write(folder / f"{fname}.wav", tone(0.9, 44100, freq + seed, seed), 44100, subtype="PCM_16")
            dev.append([fname, labels, mids, "train" if n < 3 else "val"])
            expected[fname] = labels.split(",")
        seed += 1
        fname = str(90000 + index)
        (base / "FSD50K.eval_audio").mkdir(parents=True, exist_ok=True)
        sf.write(base / "FSD50K.eval_audio" / f"{fname}.wav", tone(0.7, 44100, freq + seed, seed), 44100,
                 subtype="PCM_16")
        evaluation.append([fname, labels, mids])
        expected[fname] = labels.split(",")
    dev_csv = write_csv(base / "FSD50K.ground_truth" / "dev.csv", ["fname", "labels", "mids", "split"], dev)
    eval_csv = write_csv(base / "FSD50K.ground_truth" / "eval.csv", ["fname", "labels", "mids"], evaluation)
    return dev_csv, eval_csv, expected


AUDIOSET_CLASSES = [("/m/09x0r", "Speech", 250.0), ("/m/0bt9lr", "Dog", 500.0), ("/m/04rlf", "Music", 1000.0)]


def audioset(root: Path, fmt: str = "WAV", rate: int = 16000, recording_s: float = 24.0) -> tuple[Path, dict]:
    """balanced_train_segments.csv (three '#' lines, the last its header; values after ', '),
    class_labels_indices.csv, and the full-length audio as <YTID>.<ext> beside them.

    Each recording holds three 8 s stretches at different pitches; the segments pick windows of them.
    Returns the manifest and {YTID: (recording samples, rate, [(start_s, end_s, [names])])}.
    """
    base = root / "audioset"
    base.mkdir(parents=True)
    write_csv(base / "class_labels_indices.csv", ["index", "mid", "display_name"],
              [[i, mid, name] for i, (mid, name, _) in enumerate(AUDIOSET_CLASSES)])
    lines = ["# Segments csv created Sun Mar  5 10:54:31 2017",
             "# num_ytids=4, num_segs=5, num_unique_labels=3, num_positive_labels=7",
             "# YTID, start_seconds, end_seconds, positive_labels"]
    expected = {}
    ext = {"WAV": "wav", "FLAC": "flac"}[fmt]
    for n, ytid in enumerate(["--PJHxphWEs", "-0RWZT-miFs", "0FMdORf5iGs"]):
        parts = [tone(recording_s / 3, rate, freq + 10 * n, 300 + n * 3 + k) for k, (_, _, freq) in
                 enumerate(AUDIOSET_CLASSES)]
        samples = np.concatenate(parts)
        sf.write(base / f"{ytid}.{ext}", samples, rate, format=fmt, subtype="PCM_16")
        windows = [(1.0, 5.0, ["Speech"]), (9.5, 13.25, ["Dog", "Speech"])] if n < 2 else [(17.0, 23.0, ["Music"])]
        expected[ytid] = (samples, rate, windows)
        for start, end, names in windows:
            mids = ",".join(mid for mid, name, _ in AUDIOSET_CLASSES if name in names)
            lines.append(f'{ytid}, {start:.3f}, {end:.3f}, "{mids}"')
    manifest = base / "balanced_train_segments.csv"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest, expected


def audiofolder(root: Path) -> tuple[Path, dict[str, str]]:
    """An AudioFolder: metadata.csv (file_name, label, mic) beside the audio. Returns the folder and
    {file_name: label}."""
    base = root / "my_sounds"
    (base / "clips").mkdir(parents=True)
    rows, expected = [], {}
    for n, (label, freq) in enumerate([("knock", 300.0), ("bell", 900.0)] * 3):
        name = f"clips/{label}_{n}.flac"
        sf.write(base / name, tone(0.6, 16000, freq + n, 400 + n), 16000)
        rows.append([name, label, "usb" if n % 2 else "phone"])
        expected[name] = label
    write_csv(base / "metadata.csv", ["file_name", "label", "mic"], rows)
    return base, expected


# (class, frequency) of the DESED-style events: classes as DESED spells them.
DESED_CLASSES = {"Dog": 450.0, "Alarm_bell_ringing": 2000.0, "Speech": 220.0, "Dishes": 3200.0}


def desed(root: Path, recording_s: float = 10.0) -> tuple[Path, dict[str, list[tuple[str, float, float, float]]]]:
    """DESED's layout: metadata/validation/validation.tsv (filename, onset, offset, event_label; one row
    per event, tab-separated) beside audio/validation/<filename>. Each recording is quiet noise with tone
    events at known times and levels. Returns the TSV and {filename: [(label, onset, offset, peak level)]}."""
    base = root / "DESED" / "dataset"
    audio = base / "audio" / "validation"
    audio.mkdir(parents=True)
    layouts = [
        # well separated, different lengths and levels: every question can be asked
        [("Dog", 0.5, 1.5, 0.5), ("Alarm_bell_ringing", 3.0, 6.0, 0.05), ("Speech", 7.5, 8.3, 0.2)],
        # the same class twice, then another; Dishes very short
        [("Speech", 1.0, 2.5, 0.3), ("Speech", 4.0, 5.5, 0.3), ("Dishes", 7.0, 7.4, 0.3)],
        # overlapping events: order and count are not certain
        [("Dog", 2.0, 5.0, 0.3), ("Alarm_bell_ringing", 4.0, 6.0, 0.3)],
        # events too close together (0.1 s gap)
        [("Dishes", 1.0, 2.0, 0.3), ("Dog", 2.1, 3.0, 0.3), ("Speech", 6.0, 8.0, 0.3)],
    ]
    rows, expected = [], {}
    rate = 16000
    for n, events in enumerate(layouts):
        filename = f"Y{n}dEsEd{n}xyz_{30 + n}.000_{40 + n}.000.wav"
        rng = np.random.default_rng(500 + n)
        samples = 0.001 * rng.standard_normal(int(recording_s * rate)).astype(np.float32)
        for k, (label, onset, offset, level) in enumerate(events):
            first, last = int(onset * rate), int(offset * rate)
            event = tone(offset - onset, rate, DESED_CLASSES[label] + n, 600 + 10 * n + k, level)
            samples[first:last] += event[: last - first]
            rows.append([filename, f"{onset:.3f}", f"{offset:.3f}", label])
        sf.write(audio / filename, samples, rate, subtype="PCM_16")
        expected[filename] = events
    tsv = write_csv(base / "metadata" / "validation" / "validation.tsv", ["filename", "onset", "offset", "event_label"],
                    rows, delimiter="\t")
    return tsv, expected


def hf_datasets(root: Path) -> tuple[dict[str, Path], dict[str, tuple[str, list[str]]]]:
    """The same 6 examples as a save_to_disk Dataset, a save_to_disk DatasetDict (train/test) and Parquet
    shards whose Audio cells hold only paths. `label` is a ClassLabel, `tags` a Sequence of ClassLabel.
    Returns {form: folder} and {speaker: (label, tags)} (each example has its own speaker)."""
    import pytest

    pytest.importorskip("datasets")  # the dev extra, used here only to write the fixtures
    from datasets import Audio, ClassLabel, Dataset, DatasetDict, Features, Sequence, Value

    audio = root / "hf_audio"
    audio.mkdir(parents=True)
    labels, tag_names = ["dog", "cat"], ["loud", "indoor"]
    records = {"audio": [], "label": [], "tags": [], "speaker": []}
    expected = {}
    for n in range(6):
        path = audio / f"ex{n}.wav"
        sf.write(path, tone(0.5, 16000, 300 + 150 * n, 700 + n), 16000, subtype="PCM_16")
        tags = [[0], [1], [0, 1], [], [1], [0]][n]
        records["audio"].append(str(path))
        records["label"].append(n % 2)
        records["tags"].append(tags)
        records["speaker"].append(f"spk{n}")
        expected[f"spk{n}"] = (labels[n % 2], [tag_names[t] for t in tags])
    features = Features({"audio": Audio(), "label": ClassLabel(names=labels), "tags": Sequence(ClassLabel(names=tag_names)),
                         "speaker": Value("string")})
    dataset = Dataset.from_dict(records, features=features)
    forms = {"saved": root / "saved", "dict": root / "saved_dict", "parquet": root / "parquet"}
    dataset.save_to_disk(str(forms["saved"]))  # audio bytes embedded
    DatasetDict({"train": dataset.select(range(4)), "test": dataset.select(range(4, 6))}).save_to_disk(str(forms["dict"]))
    (forms["parquet"] / "data").mkdir(parents=True)
    # train as the Hub stores it (audio bytes in the shard, a few rows per row group); test with paths only
    embedded = Dataset.load_from_disk(str(forms["saved"])).data.table.slice(0, 4)
    pq.write_table(embedded, forms["parquet"] / "data" / "train-00000-of-00001.parquet", row_group_size=3)
    dataset.select(range(4, 6)).to_parquet(str(forms["parquet"] / "data" / "test-00000-of-00001.parquet"))
    return forms, expected
