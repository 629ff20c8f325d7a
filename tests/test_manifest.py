import json

import pandas as pd
import pytest

from cotaforge.errors import InputError
from cotaforge.manifest import read_manifest, read_manifests


def test_csv_with_multiple_labels_group_and_metadata(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("path,label,speaker,mic\na.wav,dog;bark,ann,usb\n/abs/b.wav,cat,bob,\n", encoding="utf-8")
    rows = read_manifest(path, group_by="speaker")
    assert rows[0].labels == ["dog", "bark"] and rows[0].group == "ann"
    assert rows[0].resolved_path == str(tmp_path / "a.wav")
    assert rows[1].resolved_path == "/abs/b.wav"
    assert rows[0].metadata == {"speaker": "ann", "mic": "usb"} and rows[1].metadata == {"speaker": "bob"}
    assert rows[1].manifest_row == f"{path}:3"


def test_jsonl_and_parquet_accept_label_lists(tmp_path):
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in [{"path": "a.wav", "label": ["x", "y"], "group": "g1"},
                                                         {"path": "b.wav", "label": "z"}]), encoding="utf-8")
    rows = read_manifest(jsonl)
    assert rows[0].labels == ["x", "y"] and rows[0].group == "g1" and rows[1].group is None
    parquet = tmp_path / "m.parquet"
    pd.DataFrame({"path": ["a.wav"], "label": [["x", "y"]], "id": ["clip-7"]}).to_parquet(parquet)
    row = read_manifest(parquet)[0]
    assert row.labels == ["x", "y"] and row.source_id == "clip-7"


def test_folder_per_label(tmp_path):
    for label in ("bird", "rain"):
        (tmp_path / "data" / label).mkdir(parents=True)
        (tmp_path / "data" / label / f"{label}1.wav").write_bytes(b"")
    (tmp_path / "data" / "bird" / "notes.txt").write_text("x")
    rows = read_manifest(tmp_path / "data")
    assert [(r.labels, r.source_path) for r in rows] == [(["bird"], "bird/bird1.wav"), (["rain"], "rain/rain1.wav")]


def test_rows_with_empty_values_are_kept_with_an_error(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("path,label\n,dog\nb.wav,\n", encoding="utf-8")
    rows = read_manifest(path)
    assert [r.error for r in rows] == ["path_missing", "label_missing"]


def test_row_indices_continue_across_manifests(tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.csv").write_text("path,label\n1.wav,x\n2.wav,y\n", encoding="utf-8")
    rows = read_manifests([tmp_path / "a.csv", tmp_path / "b.csv"])
    assert [r.row_index for r in rows] == [0, 1, 2, 3]


@pytest.mark.parametrize("name,content,message", [
    ("m.csv", "file,label\nx,y\n", "no 'path' column"),
    ("m.txt", "path,label\n", "unknown format"),
    ("m.csv", "path,label\n", "has no rows"),
])
def test_unreadable_manifests(tmp_path, name, content, message):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        read_manifest(tmp_path / name)


def test_speaker_column_groups_by_default_and_group_by_wins(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("path,label,speaker,session\na.wav,x,ann,s1\n", encoding="utf-8")
    assert read_manifest(path)[0].group == "ann"
    assert read_manifest(path, group_by="session")[0].group == "s1"
    assert read_manifest(path, group_by="absent")[0].group == "ann"
