import hashlib
import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cotaforge.stages.publish import assign_splits, dataset_dir, push_to_hub

from ..conftest import make_config, run_stages


def shard_rows(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    return manifest, [row for shard in manifest["shards"] for row in
                      pq.read_table(folder / shard["path"], columns=[
                          "sample_id", "split", "group_id", "class_label", "prompt_style", "question_type",
                          "answer", "options", "target", "labels", "question", "assistant_text"]).to_pylist()]


def test_datasets_loads_every_split_with_audio_decoded(built):
    datasets = pytest.importorskip("datasets")
    cfg, run, _ = built
    folder = dataset_dir(cfg)
    manifest = json.loads((folder / "manifest.json").read_text())
    loaded = datasets.load_dataset("parquet", data_dir=str(folder / "data"))
    assert set(loaded) == {s for s, n in manifest["rows"].items() if n}
    for split, ds in loaded.items():
        assert ds.num_rows == manifest["rows"][split]
        row = ds[0]
        assert row["audio"]["sampling_rate"] == 16000 and len(row["audio"]["array"]) > 1000
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]


def test_manifest_rows_and_checksums(built):
    cfg, run, reports = built
    folder = dataset_dir(cfg)
    manifest, rows = shard_rows(folder)
    assert sum(manifest["rows"].values()) == len(rows) == reports["balance"].rows_out
    for shard in manifest["shards"]:
        data = (folder / shard["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == shard["bytes"]
        assert pq.read_metadata(folder / shard["path"]).num_rows == shard["rows"]


def test_no_group_crosses_splits_and_every_split_has_a_speaker(built):
    cfg, _, _ = built
    _, rows = shard_rows(dataset_dir(cfg))
    split_of: dict[str, set] = {}
    for row in rows:
        split_of.setdefault(row["group_id"], set()).add(row["split"])
    assert all(len(s) == 1 for s in split_of.values())
    speakers_by_split = Counter(next(iter(s)) for g, s in split_of.items() if not g.startswith("drums"))
    assert set(speakers_by_split) == {"train", "validation", "test"}


def test_card_reports_the_balance_that_is_in_the_shards(built):
    cfg, _, _ = built
    folder = dataset_dir(cfg)
    _, rows = shard_rows(folder)
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "configs:" in card and "path: data/train-*.parquet" in card
    cells = Counter((r["class_label"], r["prompt_style"]) for r in rows)
    styles = sorted({s for _, s in cells})
    for cls in sorted({c for c, _ in cells}):
        line = f"| {cls} | " + " | ".join(str(cells[(cls, s)]) for s in styles) + " |"
        assert line in card
    for plot in ("class_style_heatmap.png", "cot_length_hist.png"):
        assert (folder / "plots" / plot).read_bytes()[:4] == b"\x89PNG"


def test_published_answers_agree_with_labels_and_nothing_leaks(built):
    cfg, _, _ = built
    _, rows = shard_rows(dataset_dir(cfg))
    for row in rows:
        if row["target"] == "class" and row["question_type"] == "multiple_choice":
            assert row["options"][ord(row["answer"]) - 65] == row["labels"][0].replace("_", " ")
        text = (row["question"] + row["assistant_text"]).lower()
        for word in ("label", "metadata", "annotation", "manifest", ".wav", row["sample_id"]):
            assert word not in text


def test_assign_splits_per_dataset_and_by_group():
    groups = {"speech": {f"s{i}": 100 for i in range(5)}, "drums": {f"c{i}": 10 for i in range(40)}}
    splits = assign_splits(groups, {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=0)
    for dataset, counts in groups.items():
        got = Counter(splits[g] for g in counts)
        assert set(got) == {"train", "validation", "test"}, dataset
    drums = Counter(splits[f"c{i}"] for i in range(40))
    assert drums["train"] == pytest.approx(32, abs=2)
    assert assign_splits(groups, {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=0) == splits


def test_hostile_text_is_inert_in_the_card(tmp_path, digits_manifest):
    cfg = make_config(tmp_path / "out", [digits_manifest], "publish.attribution=<script>alert(1)</script> | x")
    run_stages(cfg)
    card = (dataset_dir(cfg) / "README.md").read_text()
    assert "<script>" not in card and "&lt;script&gt;" in card


def test_push_to_hub_uploads_the_folder(monkeypatch, tmp_path):
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload", kwargs["repo_id"], kwargs))

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    push_to_hub(tmp_path, "org/name", private=True)
    assert calls[0][:2] == ("create", "org/name") and calls[0][2]["repo_type"] == "dataset"
    assert calls[1][2]["folder_path"] == str(tmp_path) and calls[1][2]["repo_type"] == "dataset"


def test_republish_is_skipped_and_atomic(built):
    cfg, run, _ = built
    from cotaforge.stages.publish import run_publish

    folder = dataset_dir(cfg)
    before = (folder / "manifest.json").read_text()
    report = run_publish(run, cfg)
    assert report.parts_skipped == 1 and (folder / "manifest.json").read_text() == before
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]


def test_column_wise_messages_match_render_user_text():
    import pyarrow as pa

    from cotaforge.cot import render_user_text
    from cotaforge.stages.publish import _messages

    table = pa.table({"question": ["Which?", "What is it?", "Is it?"],
                      "options": pa.array([["kick", "snare"], [], ["a", "b", "c", "d"]], pa.list_(pa.string())),
                      "assistant_text": ["<THINK>1", "<THINK>2", "<THINK>3"]})
    messages = _messages(table).to_pylist()
    for row, (question, options, text) in zip(messages, zip(*(table[c].to_pylist() for c in table.column_names))):
        assert [m["role"] for m in row] == ["system", "user", "assistant"]
        assert row[1]["content"] == render_user_text(question, options) and row[2]["content"] == text


def _shard_digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((folder / "data").glob("*.parquet"))}


def test_shards_do_not_depend_on_how_batches_are_sliced(built, tmp_path, monkeypatch):
    """Publish builds rows a slice at a time; the slices never show in the shards, and row groups are bounded
    in rows whatever the batch size was."""
    from cotaforge.stages import publish

    cfg, run, _ = built
    reference = _shard_digests(dataset_dir(cfg))
    monkeypatch.setattr(publish, "SLICE_ROWS", 7)
    publish._write_dataset(run, cfg, tmp_path / "sliced" / "v1", "fingerprint", 0.0)
    assert _shard_digests(tmp_path / "sliced" / "v1") == reference

    monkeypatch.setattr(publish, "ROW_GROUP_ROWS", 50)
    publish._write_dataset(run, cfg, tmp_path / "small-groups" / "v1", "fingerprint", 0.0)
    for name in reference:
        metadata = pq.read_metadata(tmp_path / "small-groups" / "v1" / "data" / name)
        groups = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
        assert all(rows == 50 for rows in groups[:-1]) and 0 < groups[-1] <= 50, (name, groups)
        assert pq.read_table(tmp_path / "small-groups" / "v1" / "data" / name).equals(
            pq.read_table(dataset_dir(cfg) / "data" / name))


def test_row_groups_end_before_their_audio_bytes_limit(built, tmp_path, monkeypatch):
    from cotaforge.stages import publish

    cfg, run, _ = built
    monkeypatch.setattr(publish, "ROW_GROUP_AUDIO_BYTES", 200_000)
    publish._write_dataset(run, cfg, tmp_path / "v1", "fingerprint", 0.0)
    for path in sorted((tmp_path / "v1" / "data").glob("*.parquet")):
        shard = pq.ParquetFile(path)
        for i in range(shard.metadata.num_row_groups):
            sizes = [len(a["bytes"]) for a in shard.read_row_group(i, columns=["audio"])["audio"].to_pylist()]
            assert sum(sizes) <= 200_000 or len(sizes) == 1, (path.name, i, len(sizes), sum(sizes))
        assert shard.metadata.num_row_groups > 1


def test_dataset_files_lists_a_complete_version_only(built, tmp_path):
    from cotaforge.errors import CotaforgeError
    from cotaforge.stages.publish import dataset_files

    cfg, _, _ = built
    folder = dataset_dir(cfg)
    manifest = json.loads((folder / "manifest.json").read_text())
    files = dataset_files(str(folder))
    assert {s: len(f) for s, f in files.items()} == Counter(s["split"] for s in manifest["shards"])
    assert all(Path(f).is_file() for paths in files.values() for f in paths)
    (tmp_path / "v1" / "data").mkdir(parents=True)
    with pytest.raises(CotaforgeError, match="not a complete published version"):
        dataset_files(tmp_path / "v1")
