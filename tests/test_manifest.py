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
    ("m.csv", "path,label,onset_s\nx,y,1\n", "has 'onset_s' but no 'offset_s'"),
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
    with pytest.raises(InputError, match=r"no column 'absent' for the split groups.*'session'\].*--group-column"):
        read_manifest(path, group_by="absent")


def test_a_run_wide_group_column_applies_where_present_and_a_typo_fails(tmp_path):
    (tmp_path / "a.csv").write_text("path,label,session\n1.wav,x,s1\n", encoding="utf-8")
    (tmp_path / "b.csv").write_text("path,label,speaker\n2.wav,y,bob\n", encoding="utf-8")
    rows = read_manifests([tmp_path / "a.csv", tmp_path / "b.csv"], group_by="session")
    assert [r.group for r in rows] == ["s1", "bob"]
    with pytest.raises(InputError, match="no manifest has the column 'sesion'"):
        read_manifests([tmp_path / "a.csv", tmp_path / "b.csv"], group_by="sesion")


def test_column_maps_rename_every_role(tmp_path):
    path = tmp_path / "meta" / "clips.csv"
    path.parent.mkdir()
    path.write_text("file,tags,rec,uid,mic\nx/a.wav,dog|bark,r1,u7,usb\n", encoding="utf-8")
    row = read_manifest(path, path_column="file", label_column="tags", label_sep="|", group_by="rec",
                        id_column="uid", audio_root=tmp_path / "sounds")[0]
    assert row.labels == ["dog", "bark"] and row.group == "r1" and row.source_id == "u7"
    assert row.source_path == "x/a.wav" and row.resolved_path == str(tmp_path / "sounds" / "x" / "a.wav")
    assert row.metadata == {"rec": "r1", "mic": "usb"}
    templated = read_manifest(path, path_template="{rec}/{file}", label_column="tags")[0]
    assert templated.source_path == "r1/x/a.wav" and templated.labels == ["dog|bark"]


@pytest.mark.parametrize("keys,message", [
    ({}, r"no 'path' column for the audio paths; its columns are \['file', 'tags'\]\. Pass --path-column"),
    ({"path_column": "file"}, r"no column 'label' for the labels; its columns are \['file', 'tags'\]\. Pass --label-column"),
    ({"path_column": "file", "label_column": "tag"}, r"no column 'tag' for the labels.*--label-column"),
    ({"path_template": "{folder}/{file}", "label_column": "tags"}, r"no column 'folder' for the path template"),
    ({"path_column": "file", "label_column": "tags", "id_column": "uid"}, r"no column 'uid' for the clip ids.*--id-column"),
    ({"preset": "esc50"}, r"no column 'filename' for the path template 'audio/\{filename\}' \(preset esc50 expects it\)"),
])
def test_mapping_problems_name_the_column_the_columns_there_and_the_flag(tmp_path, keys, message):
    path = tmp_path / "m.csv"
    path.write_text("file,tags\nmissing.wav,dog\n", encoding="utf-8")
    with pytest.raises(InputError, match=message):
        read_manifest(path, **keys)


def test_label_ids_get_display_names_from_a_table(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("path,label\na.wav,3;7\nb.wav,7\n", encoding="utf-8")
    names = tmp_path / "names.csv"
    names.write_text("id,name\n3,dog bark\n7,siren\n", encoding="utf-8")
    assert [r.labels for r in read_manifest(path, label_names=names)] == [["dog bark", "siren"], ["siren"]]
    names.write_text("id,name\n3,dog bark\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"label ids 7 have no name in .*names.csv"):
        read_manifest(path, label_names=names)


def test_windows_of_one_recording_share_a_group_and_name_their_span(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("path,label,start_s,end_s\nlong.flac,x,0,10\nlong.flac,y,10,20.5\nother.wav,x,,\n"
                    "long.flac,x,5,abc\n", encoding="utf-8")
    rows = read_manifest(path)
    assert [(r.start_s, r.end_s) for r in rows[:3]] == [(0.0, 10.0), (10.0, 20.5), (None, None)]
    assert rows[0].group == rows[1].group == "long.flac" and rows[2].group is None
    assert rows[1].source_id == "long.flac#t=10.000,20.500" and rows[2].source_id == "other.wav"
    assert rows[3].error == "segment_invalid" and "'abc' is not a number" in rows[3].error_message


def test_config_entries_carry_their_own_mapping(tmp_path):
    from cotaforge.config import load_config
    from cotaforge.manifest import read_inputs

    (tmp_path / "a.csv").write_text("file,tags\na.wav,dog\n", encoding="utf-8")
    (tmp_path / "b.csv").write_text("path,label\nb.wav,cat\n", encoding="utf-8")
    config = tmp_path / "run.yaml"
    config.write_text("inputs:\n  manifests:\n    - {path: a.csv, path_column: file, label_column: tags, "
                      "audio_root: sounds}\n    - b.csv\n", encoding="utf-8")
    rows = read_inputs(load_config(config).inputs).rows
    assert [(r.labels, r.resolved_path) for r in rows] == [(["dog"], str(tmp_path / "sounds" / "a.wav")),
                                                           (["cat"], str(tmp_path / "b.wav"))]


def test_tab_separated_files_whatever_their_extension(tmp_path):
    for name in ("events.tsv", "events.csv"):
        (tmp_path / name).write_text("filename\tonset\toffset\tevent_label\na.wav\t0.5\t1.0\tDog\n", encoding="utf-8")
        row = read_manifest(tmp_path / name)[0]
        assert row.events == [{"label": "Dog", "onset_s": 0.5, "offset_s": 1.0}] and row.labels == ["Dog"]


def test_command_line_flags_become_the_run_wide_mapping(tmp_path):
    from cotaforge.cli import _build_config

    cfg = _build_config(None, [tmp_path / "m.csv"], tmp_path / "out", None, "rec", None, hf_dataset=["org/name"],
                        mapping={"preset": "esc50", "label_column": "category", "label_sep": ",",
                                 "audio_root": tmp_path / "wav"})
    entries = cfg.inputs.entries()
    assert [(e.path, e.hf_dataset) for e in entries] == [(tmp_path / "m.csv", None), (None, "org/name")]
    assert all(e.preset == "esc50" and e.label_column == "category" and e.label_sep == "," and e.group_by == "rec"
               and e.audio_root == tmp_path / "wav" for e in entries)
    from cotaforge.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown preset 'esc-50'; choose one of esc50, urbansound8k"):
        _build_config(None, [tmp_path / "m.csv"], None, None, None, None, mapping={"preset": "esc-50"})


@pytest.mark.parametrize("entry,message", [
    ({"path": "a.csv", "label_colum": "tags"}, r"inputs\.manifests\.0\.entry\.label_colum: Extra inputs are not permitted"),
    ({"path": "a.csv", "hf_dataset": "org/name"}, "exactly one of 'path' or 'hf_dataset'"),
    ({"path": "a.csv", "preset": "esc-50"}, "unknown preset 'esc-50'"),
])
def test_a_bad_manifest_entry_in_a_config_names_its_key(tmp_path, entry, message):
    from cotaforge.config import load_config
    from cotaforge.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(None, None, inputs__manifests=[entry])
