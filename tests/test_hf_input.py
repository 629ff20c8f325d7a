"""Hugging Face datasets as input: save_to_disk folders and Parquet shards, read without the `datasets` decoder."""

import io

import numpy as np
import pytest
import soundfile as sf

from cotaforge.config import ManifestEntry
from cotaforge.errors import InputError
from cotaforge.hf_input import read_hf_dataset
from cotaforge.stages.ingest import load_run_stats, read_clips, run_ingest

from . import corpus_layouts as layouts
from .conftest import make_config


@pytest.fixture(scope="module")
def hf_forms(tmp_path_factory):
    return layouts.hf_datasets(tmp_path_factory.mktemp("hf"))


@pytest.mark.parametrize("form", ["saved", "dict", "parquet"])
def test_every_form_ingests_with_class_names_groups_and_the_right_audio(tmp_path, hf_forms, form):
    forms, expected = hf_forms
    cfg = make_config(tmp_path / "out", [], group_by=None)
    cfg.inputs.manifests = [ManifestEntry(hf_dataset=str(forms[form]))]
    run, report = run_ingest(cfg)
    assert report.rejected_total == 0 and report.rows_out == 6
    clips = read_clips(run, 0, load_run_stats(run), with_audio=True).to_pylist()
    for clip in clips:
        speaker = clip["group_id"].split(":")[1]  # the speaker column groups by default
        assert clip["labels"] == [expected[speaker][0]]
        n = int(speaker[3:])
        got, _ = sf.read(io.BytesIO(clip["audio_wav"]), dtype="float32")
        want, _ = sf.read(forms["saved"].parent / "hf_audio" / f"ex{n}.wav", dtype="float32")
        np.testing.assert_allclose(got, want, atol=1e-4)
    if form != "saved":
        stats = load_run_stats(run)
        assert "split" not in stats["metadata_values"][forms[form].name]  # the split is provenance only


def test_label_column_by_name_with_a_list_of_class_labels(hf_forms):
    forms, expected = hf_forms
    rows = read_hf_dataset(ManifestEntry(hf_dataset=str(forms["saved"]), label_column="tags")).rows
    assert [r.labels for r in rows] == [expected[f"spk{n}"][1] for n in range(6)]
    assert rows[3].error == "label_missing"  # an example with no tag
    split = read_hf_dataset(ManifestEntry(hf_dataset=str(forms["dict"]), hf_split="test")).rows
    assert [r.group for r in split] == ["spk4", "spk5"] and split[0].metadata["split"] == "test"


def test_a_manifest_folder_holding_a_saved_dataset_is_read_as_one(hf_forms):
    from cotaforge.manifest import read_manifest

    forms, _ = hf_forms
    assert len(read_manifest(forms["parquet"])) == 6


@pytest.mark.parametrize("keys,message", [
    ({"label_column": "class"}, r"no column 'class' for the labels; its columns are \['audio', 'label', 'tags', "
                                r"'speaker'\]\. Pass --label-column"),
    ({"path_column": "sound"}, r"no column 'sound' for the audio.*--path-column"),
    ({"hf_split": "validation"}, r"no data files for split 'validation'"),
])
def test_mapping_problems_are_clear_errors(hf_forms, keys, message):
    forms, _ = hf_forms
    with pytest.raises(InputError, match=message):
        read_hf_dataset(ManifestEntry(hf_dataset=str(forms["dict"]), **keys))


def test_a_hub_name_is_fetched_into_the_cache_then_read_like_a_folder(hf_forms, monkeypatch, tmp_path):
    """The Hub path without a network: the client is replaced by one that serves the local Parquet folder
    only at the Hub's Parquet conversion, as for a dataset stored in another format."""
    import huggingface_hub

    forms, expected = hf_forms
    calls = []

    def snapshot_download(repo_id, repo_type, allow_patterns, revision=None):
        calls.append((repo_id, repo_type, revision))
        if revision == "refs/convert/parquet":
            return str(forms["parquet"])
        empty = tmp_path / "snapshot"
        empty.mkdir(exist_ok=True)
        return str(empty)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    rows = read_hf_dataset(ManifestEntry(hf_dataset="org/sounds")).rows
    assert calls == [("org/sounds", "dataset", None), ("org/sounds", "dataset", "refs/convert/parquet")]
    assert sorted(r.group for r in rows) == sorted(expected) and rows[0].source_dataset == "sounds"

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(InputError, match=r"'org/sounds' could not be fetched \(OSError: network unreachable\)"):
        read_hf_dataset(ManifestEntry(hf_dataset="org/sounds"))
