"""Corpus presets on tiny corpora in each corpus's own published metadata layout (tests/corpus_layouts.py)."""

import io
import json

import numpy as np
import pytest
import soundfile as sf

from cotaforge.corpora import PRESETS, match_preset
from cotaforge.errors import InputError
from cotaforge.manifest import read_manifest
from cotaforge.scenes import events_from_json
from cotaforge.stages.ingest import load_run_stats, read_clips, run_ingest

from . import corpus_layouts as layouts
from .conftest import make_config


def ingest(tmp_path, manifests, *overrides, **inputs):
    cfg = make_config(tmp_path / "out", list(manifests), *overrides, group_by=None)
    for key, value in inputs.items():
        setattr(cfg.inputs, key, value)
    run, report = run_ingest(cfg)
    stats = load_run_stats(run)
    clips = [c for b in range(run.batch_count()) for c in read_clips(run, b, stats, with_audio=True).to_pylist()]
    return run, report, {c["source_id"]: c for c in clips}


def test_every_preset_is_detected_from_its_own_header():
    for preset in PRESETS:
        assert match_preset(list(preset.header)) == preset
    # A superset of a smaller header picks the more specific preset (FSD50K's dev.csv has `split`).
    assert match_preset(["fname", "labels", "mids", "split"]).path_template.startswith("FSD50K.dev_audio/")
    assert match_preset(["fname", "labels", "mids"]).path_template.startswith("FSD50K.eval_audio/")
    assert match_preset(["path", "label"]) is None


def test_esc50_detected_label_category_group_source_recording(tmp_path):
    manifest, expected = layouts.esc50(tmp_path)
    run, report, clips = ingest(tmp_path, [manifest])
    assert report.rejected_total == 0 and len(clips) == len(expected) == 24
    for filename, (category, src_file) in expected.items():
        clip = clips[filename]
        assert clip["labels"] == [category] and clip["source_path"] == f"audio/{filename}"
        assert clip["group_id"] == f"esc50:{src_file}"  # both takes of one recording share a group
        assert clip["source_dataset"] == "esc50"
    assert any("preset esc50 detected" in note for note in report.notes)
    stats = load_run_stats(run)
    # fold, take, src_file ... stay in each clip's metadata for provenance but are never asked about
    assert json.loads(clips["1-100000-A-0.wav"]["metadata"])["fold"] == "1"
    assert stats["metadata_values"]["esc50"] == {}


def test_esc50_folds_as_groups_reproduce_cross_validation(tmp_path):
    manifest, expected = layouts.esc50(tmp_path)
    _, _, clips = ingest(tmp_path, [manifest], group_by="fold")
    for filename in expected:
        assert clips[filename]["group_id"] == f"esc50:{filename.split('-')[0]}"


@pytest.mark.slow
def test_esc50_folds_pinned_to_splits_reproduce_one_cross_validation_split(tmp_path):
    manifest, expected = layouts.esc50(tmp_path)
    folds = sorted({name.split("-")[0] for name in expected})
    pins = {fold: "train" for fold in folds[:-2]} | {folds[-2]: "validation", folds[-1]: "test"}
    cfg = make_config(tmp_path / "out", [manifest], "balance.enabled=false", group_by="fold")
    cfg.publish.group_splits = pins
    _run_pipeline(cfg)
    published = _published(cfg)
    singles = [row for row in published if not row["scene_kind"]]
    assert singles and all(row["split"] == pins[row["source_id"].split("-")[0]] for row in singles)
    _assert_leak_safe(published)  # scenes too draw only from clips of their own fold's split


def test_pinned_groups_keep_their_split_and_the_rest_follow_the_ratios():
    from cotaforge.stages.publish import assign_splits

    groups = {"esc50": {f"esc50:{fold}": 400 for fold in "12345"}, "other": {f"other:g{i}": 10 for i in range(20)}}
    ratios = {"train": 0.8, "validation": 0.1, "test": 0.1}
    pinned = assign_splits(groups, ratios, seed=0, pinned={"5": "test", "4": "validation", "esc50:1": "train"})
    assert pinned["esc50:5"] == "test" and pinned["esc50:4"] == "validation" and pinned["esc50:1"] == "train"
    # Unpinned groups of the same dataset fill the ratios around the pins; other datasets are untouched.
    assert {pinned["esc50:2"], pinned["esc50:3"]} == {"train"}
    assert {k: v for k, v in pinned.items() if k.startswith("other:")} == assign_splits(
        {"other": groups["other"]}, ratios, seed=0)


def test_pins_must_name_a_configured_split():
    from pydantic import ValidationError

    from cotaforge.config import PublishSection

    with pytest.raises(ValidationError, match="group_splits names splits"):
        PublishSection(group_splits={"5": "holdout"})


def test_urbansound8k_slices_under_their_fold_grouped_by_recording(tmp_path):
    manifest, expected = layouts.urbansound8k(tmp_path)
    run, report, clips = ingest(tmp_path, [manifest], preset="urbansound8k")
    assert report.rejected_total == 0 and len(clips) == len(expected)
    for name, (label, fs_id) in expected.items():
        clip = clips[name]
        assert clip["labels"] == [label] and clip["group_id"] == f"urbansound8k:{fs_id}"
        fold = json.loads(clip["metadata"])["fold"]
        assert clip["source_path"] == f"audio/fold{fold}/{name}"
        # start/end locate the slice in its Freesound recording: provenance, not a window to cut
        assert clip["facts"]["duration_s"] == pytest.approx(0.8, abs=0.01)
        assert float(json.loads(clip["metadata"])["end"]) - float(json.loads(clip["metadata"])["start"]) == 4.0
    assert load_run_stats(run)["metadata_values"]["urbansound8k"] == {}


def test_fsd50k_dev_and_eval_with_comma_separated_labels(tmp_path):
    dev, evaluation, expected = layouts.fsd50k(tmp_path)
    _, report, clips = ingest(tmp_path, [dev, evaluation])
    assert report.rejected_total == 0 and len(clips) == len(expected) == 15
    for fname, labels in expected.items():
        assert clips[fname]["labels"] == labels and clips[fname]["class_label"] == labels[0]
        audio = "FSD50K.eval_audio" if fname.startswith("9") else "FSD50K.dev_audio"
        assert clips[fname]["source_path"] == f"{audio}/{fname}.wav"


def _decoded(clip) -> np.ndarray:
    samples, rate = sf.read(io.BytesIO(clip["audio_wav"]), dtype="int16")
    assert rate == 16000
    return samples


@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_audioset_segments_are_cut_from_the_full_recordings_at_their_times(tmp_path, fmt):
    manifest, expected = layouts.audioset(tmp_path, fmt=fmt)
    if fmt == "FLAC":
        manifest.write_text(manifest.read_text().replace(", ", ","), encoding="utf-8")  # spacing varies in copies
    _, report, clips = ingest(tmp_path, [manifest], preset="audioset",
                              path_template="{YTID}.flac" if fmt == "FLAC" else None)
    assert report.rejected_total == 0 and len(clips) == 5
    for ytid, (samples, rate, windows) in expected.items():
        for start, end, names in windows:
            clip = clips[f"{ytid}#t={start:.3f},{end:.3f}"]
            assert sorted(clip["labels"]) == sorted(names)
            assert clip["group_id"] == f"audioset:{ytid}"  # windows of one recording never cross splits
            want = np.round(samples[int(start * rate):int(end * rate)] * 32767).astype(np.int16)
            got = _decoded(clip)
            assert len(got) == len(want)
            np.testing.assert_allclose(got, want, atol=2)  # the very samples of that window


def test_a_segment_past_the_end_of_its_file_is_a_reject_row(tmp_path):
    manifest, expected = layouts.audioset(tmp_path)
    text = manifest.read_text(encoding="utf-8")
    manifest.write_text(text + '--PJHxphWEs, 20.000, 30.000, "/m/09x0r"\n--PJHxphWEs, 25.000, 35.000, "/m/09x0r"\n'
                               '--PJHxphWEs, 14.000, 12.000, "/m/09x0r"\n', encoding="utf-8")
    run, report, clips = ingest(tmp_path, [manifest])
    rejects = {r["manifest_row"].rsplit(":", 1)[1]: r for r in run.rejects("ingest").to_pylist()}
    assert report.rejected == {"segment_out_of_range": 2, "segment_invalid": 1}
    assert rejects["9"]["reason"] == rejects["10"]["reason"] == "segment_out_of_range"
    assert "lasts 24.000 s" in rejects["9"]["message"]
    assert rejects["11"]["reason"] == "segment_invalid"
    assert len(clips) == 5


def test_audioset_label_ids_need_a_name_table(tmp_path):
    manifest, _ = layouts.audioset(tmp_path)
    (manifest.parent / "class_labels_indices.csv").unlink()
    with pytest.raises(InputError, match="class_labels_indices.csv.*--label-names"):
        read_manifest(manifest)
    names = tmp_path / "names.csv"
    names.write_text("mid,display_name\n/m/09x0r,Speech\n/m/0bt9lr,Dog\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"label ids /m/04rlf have no name in .*names.csv"):
        read_manifest(manifest, label_names=names)


def test_audiofolder_metadata_csv_in_a_folder(tmp_path):
    folder, expected = layouts.audiofolder(tmp_path)
    run, report, clips = ingest(tmp_path, [folder])
    assert report.rejected_total == 0
    assert {sid: c["labels"] for sid, c in clips.items()} == {name: [label] for name, label in expected.items()}
    assert load_run_stats(run)["metadata_values"]["my_sounds"] == {"mic": ["phone", "usb"]}


def test_strong_tsv_recordings_become_one_clip_with_their_event_timeline(tmp_path):
    tsv, expected = layouts.desed(tmp_path)
    run, report, clips = ingest(tmp_path, [tsv])
    assert report.rejected_total == 0 and len(clips) == 4
    assert any("preset strong-tsv detected" in note for note in report.notes)
    for filename, annotated in expected.items():
        clip = clips[filename]
        assert clip["scene_kind"] == "recording" and clip["source_path"] == filename
        assert clip["labels"] == list(dict.fromkeys(label for label, *_ in annotated))
        events = events_from_json(clip["events"])
        assert [(e.class_label, e.onset_s, e.offset_s) for e in events] == [
            (label.replace("_", " "), onset, offset) for label, onset, offset, _ in annotated]
        assert all(e.clip_id == clip["clip_id"] and e.source_id == filename and e.gain_db == 0 for e in events)
        source, rate = sf.read(tsv.parents[2] / "audio" / "validation" / filename, dtype="float64")
        for event, (_, onset, offset, peak) in zip(events, annotated):
            # the level of the recording over the event's span, whatever else sounds then
            span = source[int(onset * rate):int(offset * rate)]
            assert event.level_dbfs == pytest.approx(10 * np.log10(np.mean(span**2)), abs=0.15)
            if filename.startswith("Y0"):  # apart from the others, a tone of peak A has an RMS of A/sqrt(2)
                assert event.level_dbfs == pytest.approx(20 * np.log10(peak / np.sqrt(2)), abs=0.6)


def test_an_event_past_the_end_of_its_recording_is_a_reject_row(tmp_path):
    tsv, _ = layouts.desed(tmp_path)
    with tsv.open("a", encoding="utf-8") as handle:
        handle.write("Y0dEsEd0xyz_30.000_40.000.wav\t9.000\t12.500\tDog\n"
                     "Y1dEsEd1xyz_31.000_41.000.wav\t5.000\t4.000\tDog\n")
    run, report, clips = ingest(tmp_path, [tsv])
    assert report.rejected == {"event_out_of_range": 1, "event_invalid": 1}
    messages = {r["reason"]: r["message"] for r in run.rejects("ingest").to_pylist()}
    assert "ends at 12.5 s" in messages["event_out_of_range"]
    assert "validation.tsv:5: line 14: the event ends (4 s) before it starts (5 s)" in messages["event_invalid"]
    assert len(clips) == 2


def _run_pipeline(cfg) -> None:
    """Every stage in the order `cotaforge run` takes them (compose included), in this process."""
    from cotaforge.stages.balance import run_balance
    from cotaforge.stages.caption import run_caption
    from cotaforge.stages.compose import run_compose
    from cotaforge.stages.expand import run_expand
    from cotaforge.stages.publish import run_publish
    from cotaforge.stages.validate import run_validate

    run, _ = run_ingest(cfg)
    for stage in (run_compose, run_caption, run_expand, run_validate, run_balance, run_publish):
        stage(run, cfg)


def _published(cfg) -> list[dict]:
    import pyarrow.parquet as pq

    from cotaforge.stages.publish import dataset_dir

    columns = ["split", "group_id", "clip_id", "source_id", "source_path", "labels", "class_label", "metadata",
               "question", "target", "target_value", "scene_kind", "events"]
    folder = dataset_dir(cfg)
    shards = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["shards"]
    return [row for shard in shards for row in pq.read_table(folder / shard["path"], columns=columns).to_pylist()]


def _assert_leak_safe(rows: list[dict]) -> None:
    """No group in two splits, and no clip heard in two splits, alone or as an event of a composed scene."""
    splits_of: dict[str, set[str]] = {}
    for row in rows:
        splits_of.setdefault(row["group_id"], set()).add(row["split"])
    assert all(len(splits) == 1 for splits in splits_of.values()), splits_of
    assert len({row["split"] for row in rows}) >= 2  # the groups really were spread over splits
    heard_in: dict[str, set[str]] = {}
    for row in rows:
        heard_in.setdefault(row["clip_id"], set()).add(row["split"])
        for event in events_from_json(row["events"]):
            heard_in.setdefault(event.clip_id, set()).add(row["split"])
    assert all(len(splits) == 1 for splits in heard_in.values())


@pytest.mark.slow
@pytest.mark.parametrize("corpus", ["esc50", "urbansound8k", "fsd50k"])
def test_published_datasets_from_presets_have_right_labels_and_leak_safe_groups(tmp_path, corpus):
    if corpus == "fsd50k":
        dev, evaluation, expected = layouts.fsd50k(tmp_path)
        manifests, want = [dev, evaluation], {fname: labels for fname, labels in expected.items()}
    else:
        manifest, expected = getattr(layouts, corpus)(tmp_path)
        manifests, want = [manifest], {name: [label] for name, (label, _) in expected.items()}
    cfg = make_config(tmp_path / "out", manifests, "balance.enabled=false", group_by=None)
    _run_pipeline(cfg)
    published = _published(cfg)
    rows = [row for row in published if not row["scene_kind"]]  # composed scenes come on top
    assert {row["source_id"] for row in rows} == set(want)  # every clip published under its own id
    for row in rows:
        assert row["labels"] == want[row["source_id"]] and row["class_label"] == want[row["source_id"]][0]
        assert not any(word in row["question"].lower() for word in ("fold", "src_file", "salience", "fsid"))
    if corpus != "fsd50k":  # FSD50K clips are their own groups
        for row in rows:
            assert row["group_id"] == f"{corpus}:{expected[row['source_id']][1]}"
    if corpus == "esc50":  # the official fold travels with every row, to rebuild the cross-validation
        assert all(json.loads(row["metadata"])["fold"] == row["source_id"].split("-")[0] for row in rows)
    _assert_leak_safe(published)


@pytest.mark.integration
def test_cli_runs_a_corpus_from_its_own_metadata_file(tmp_path):
    from .test_cli import run_cli

    manifest, expected = layouts.esc50(tmp_path)
    result = run_cli("run", "--manifest", manifest, "--out", tmp_path / "out", "--name", "esc", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = (tmp_path / "out" / "runs" / "esc" / "report.md").read_text(encoding="utf-8")
    assert "preset esc50 detected from its columns" in report



def test_a_mapping_problem_stops_the_run_before_any_audio_is_read(tmp_path):
    manifest, _ = layouts.esc50(tmp_path)
    cfg = make_config(tmp_path / "out", [manifest], "inputs.preset=esc50", "inputs.label_column=class", group_by=None)
    with pytest.raises(InputError) as raised:
        run_ingest(cfg)
    message = str(raised.value)
    assert "esc50.csv has no column 'class' for the labels; its columns are" in message
    assert "'category'" in message and "--label-column COLUMN" in message
    assert not list((tmp_path / "out").rglob("part-*.parquet"))


def _true_answer(target: str, asked: list[str], annotated: list[tuple[str, float, float, float]]) -> str:
    """The answer to a scene question worked out from the annotation rows alone (not from the pipeline)."""
    events = sorted(((label.replace("_", " "), onset, offset, peak) for label, onset, offset, peak in annotated),
                    key=lambda e: e[1])
    classes = [e[0] for e in events]
    by_class = {c: [e for e in events if e[0] == c] for c in classes}
    if target == "scene.count":
        return str(len(by_class.get(asked[0], [])) if asked else len(events))
    if target in ("scene.first", "scene.last"):
        return classes[0] if target == "scene.first" else classes[-1]
    if target == "scene.after":
        return classes[classes.index(asked[0]) + 1]
    if target == "scene.before":
        return "yes" if by_class[asked[0]][0][1] < by_class[asked[1]][0][1] else "no"
    if target in ("scene.longest", "scene.shortest"):
        pick = max if target == "scene.longest" else min
        return pick(events, key=lambda e: e[2] - e[1])[0]
    if target == "scene.louder":
        return max(asked, key=lambda c: by_class[c][0][3])
    if target == "scene.loudest":
        return max(events, key=lambda e: e[3])[0]
    if target == "scene.present":
        return "yes" if asked[0] in by_class else "no"
    if target == "scene.onset":
        return f"{by_class[asked[0]][0][1]:.1f}"
    raise AssertionError(f"unexpected scene target {target}")


@pytest.mark.slow
def test_timestamped_corpus_publishes_annotated_timelines_and_answers_that_agree(tmp_path):
    """A DESED-style corpus through the whole pipeline with the strong-tsv preset: every published row carries
    its recording's annotated events, and every scene answer is the one the annotations give."""
    import pyarrow.parquet as pq

    from cotaforge.stages.publish import dataset_dir

    tsv, expected = layouts.desed(tmp_path)
    cfg = make_config(tmp_path / "out", [tsv], "balance.enabled=false", "inputs.preset=strong-tsv", group_by=None)
    _run_pipeline(cfg)
    folder = dataset_dir(cfg)
    shards = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["shards"]
    rows = [row for shard in shards for row in pq.read_table(folder / shard["path"]).to_pylist()]
    asked: dict[str, set[str]] = {}
    for row in rows:
        annotated = expected[row["source_id"]]
        assert row["scene_kind"] == "recording" and row["source_path"] == row["source_id"]
        events = events_from_json(row["events"])
        assert [(e.class_label, e.onset_s, e.offset_s) for e in events] == [
            (label.replace("_", " "), onset, offset) for label, onset, offset, _ in annotated]
        assert all(e.clip_id == row["clip_id"] for e in events)
        if not row["target"].startswith("scene."):
            continue
        asked.setdefault(row["source_id"], set()).add(row["target"] + ("" if json.loads(row["asked_value"]) else "*"))
        truth = _true_answer(row["target"], json.loads(row["asked_value"]), annotated)
        assert row["target_value"] == truth, (row["question"], row["target_value"], truth)
        if row["question_type"] == "multiple_choice" or row["options"]:
            assert row["options"][ord(row["answer"]) - ord("A")] == truth
        elif truth in ("yes", "no"):
            assert row["answer"] == truth
    # Every recording got scene questions ...
    assert set(asked) == set(expected)
    overlapping, too_close = "Y2dEsEd2xyz_32.000_42.000.wav", "Y3dEsEd3xyz_33.000_43.000.wav"
    # ... but none that the margin rules make uncertain: nothing counted or ordered across overlapping events,
    # no "which comes first" and no count of all sounds where two events are 0.1 s apart.
    assert not {t for t in asked[overlapping] if t.split("*")[0] in
                ("scene.count", "scene.first", "scene.last", "scene.after", "scene.before")}
    assert "scene.first*" not in asked[too_close] and "scene.count*" not in asked[too_close]
    # Questions were really asked of the timelines, not only presence.
    assert {"scene.count", "scene.onset"} <= {t.rstrip("*") for t in asked["Y0dEsEd0xyz_30.000_40.000.wav"]}


def test_a_corpus_root_folder_is_read_through_its_metadata_files(tmp_path):
    manifest, expected = layouts.esc50(tmp_path)
    rows = read_manifest(manifest.parents[1])  # ESC-50-master/, not its audio/ folder as a label
    assert {r.source_id: r.labels[0] for r in rows} == {name: category for name, (category, _) in expected.items()}
    dev, evaluation, fsd = layouts.fsd50k(tmp_path)
    rows = read_manifest(dev.parents[1], preset="fsd50k")  # dev.csv and eval.csv both
    assert sorted(r.source_id for r in rows) == sorted(fsd) and [r.row_index for r in rows] == list(range(len(fsd)))
