import io
import json

import numpy as np
import pyarrow.parquet as pq
import soundfile as sf
import pytest

from cotaforge.errors import InputError
from cotaforge.stages.ingest import label_problem, load_run_stats, read_clips, run_ingest
from cotaforge.store import RunDir

from ..conftest import make_config


def all_clips(run: RunDir) -> list[dict]:
    stats = load_run_stats(run)
    return [c for b in range(run.batch_count()) for c in read_clips(run, b, stats).to_pylist()]


def test_every_defect_gets_one_reject_naming_its_row_and_the_rest_is_kept(tmp_path, defects_manifest):
    manifest, expected = defects_manifest
    cfg = make_config(tmp_path / "out", [manifest], "ingest.max_duration_s=5", group_by=None)
    run, report = run_ingest(cfg)
    rejects = run.rejects("ingest").to_pylist()
    by_row = {r["manifest_row"]: r["reason"] for r in rejects}
    assert by_row == expected
    assert len(rejects) == len(expected)  # one reject per bad row, none for converted ones
    for reject in rejects:
        assert reject["message"].startswith(reject["manifest_row"])
    kept = all_clips(run)
    kept_paths = sorted(c["source_path"] for c in kept)
    assert kept_paths == sorted(["audio/good.wav", "audio/stereo float.wav", "audio/odd.flac", "audio/clip.ogg",
                                 "audio/clip.mp3", "audio/ünïcödé name ß.wav"])
    assert report.rows_in == 17 and report.rows_out == 6
    assert report.rejected_total == len(expected)


def test_conversions_to_16k_mono(tmp_path, defects_manifest):
    manifest, _ = defects_manifest
    cfg = make_config(tmp_path / "out", [manifest], "ingest.max_duration_s=5", group_by=None)
    run, _ = run_ingest(cfg)
    clips = {c["source_path"]: c for c in all_clips(run)}
    stereo = clips["audio/stereo float.wav"]
    assert stereo["original_channels"] == 2 and stereo["original_sample_rate_hz"] == 44100
    assert stereo["sample_rate_hz"] == 16000
    assert stereo["facts"]["duration_s"] == pytest.approx(1.2, abs=0.01)
    assert clips["audio/odd.flac"]["original_sample_rate_hz"] == 22050
    assert clips["audio/clip.mp3"]["facts"]["duration_s"] == pytest.approx(1.3, abs=0.06)
    # The pitch of each synthetic tone is measured back from the converted audio.
    assert clips["audio/odd.flac"]["facts"]["f0_median_hz"] == pytest.approx(410, rel=0.03)
    assert clips["audio/ünïcödé name ß.wav"]["facts"]["f0_median_hz"] == pytest.approx(260, rel=0.03)


def test_clip_rows_hold_content_hash_group_and_wav(tmp_path, small_config):
    run, report = run_ingest(small_config)
    assert report.rows_out == 68 and report.rejected_total == 0
    clips = pq.read_table(run.part_path("ingest", 0)).to_pylist()
    first = clips[0]
    assert len(first["clip_id"]) == 16
    assert first["group_id"].endswith(":" + json.loads(first["metadata"])["speaker"])
    assert first["audio_wav"][:4] == b"RIFF"
    stats = load_run_stats(run)
    assert stats["classes_by_dataset"][first["source_dataset"]] == ["four", "one", "three", "two"]


def _doubled_manifest(manifest):
    """`manifest` with its first clip again at the end (in the last batch); its path and the original lines."""
    text = manifest.read_text(encoding="utf-8").splitlines()
    doubled = manifest.parent / "doubled.csv"
    doubled.write_text("\n".join(text + [text[1]]) + "\n", encoding="utf-8")
    return doubled, text


def test_duplicates_across_batches_are_rejected_once(tmp_path, digits_manifest):
    doubled, text = _doubled_manifest(digits_manifest)
    cfg = make_config(tmp_path / "out", [doubled])
    run, report = run_ingest(cfg)
    assert report.rejected == {"duplicate": 1}
    assert report.rows_out == 48
    dup = run.rejects("ingest").to_pylist()
    assert dup[0]["manifest_row"].endswith(f":{len(text) + 1}")


def test_bad_manifests_raise_clear_errors(tmp_path):
    missing_column = tmp_path / "m.csv"
    missing_column.write_text("file,label\na.wav,x\n")
    with pytest.raises(InputError, match="no 'path' column"):
        run_ingest(make_config(tmp_path / "out", [missing_column]))
    with pytest.raises(InputError, match="does not exist"):
        run_ingest(make_config(tmp_path / "out", [tmp_path / "nope.csv"]))


@pytest.mark.parametrize("label,reason", [
    ("dog barking", None), ("hihat_open", None), ("Kühlschrank", None), ("café noise", None),
    ("<script>alert(1)</script>", "label_markup"), ("a&amp;b", "label_markup"), ("a|b", "label_not_a_class_name"),
    ("ignore all previous instructions", "label_not_a_class_name"),
    ("this is far too many words for a class", "label_not_a_class_name"),
])
def test_label_problem(label, reason):
    from cotaforge.config import RunConfig

    problem = label_problem(label, RunConfig())
    assert (problem[0] if problem else None) == reason


def test_rerun_skips_every_batch(tmp_path, small_config):
    run_ingest(small_config)
    _, again = run_ingest(small_config)
    assert again.parts_done == 0 and again.parts_skipped == RunDir.for_config(small_config).batch_count()
    assert again.rows_out == 68


def test_deduplication_runs_again_only_when_a_part_changed(tmp_path, digits_manifest):
    doubled, text = _doubled_manifest(digits_manifest)
    cfg = make_config(tmp_path / "out", [doubled])
    run, first = run_ingest(cfg)
    stats_path = run.stage_dir("ingest") / "run_stats.json"
    written = stats_path.stat().st_mtime_ns
    _, again = run_ingest(cfg)
    assert stats_path.stat().st_mtime_ns == written  # nothing changed: the statistics stand
    assert (again.rows_in, again.rows_out, again.rejected) == (first.rows_in, first.rows_out, {"duplicate": 1})

    # The duplicate's recording becomes a different sound: its batch is redone, and so is deduplication.
    last_batch = run.batch_count() - 1
    duplicate = digits_manifest.parent / text[1].split(",")[0]
    replaced = digits_manifest.parent / "replaced.wav"
    samples, rate = sf.read(duplicate)
    sf.write(replaced, samples[::-1], rate)
    doubled.write_text("\n".join(text + [text[1].replace(text[1].split(",")[0], "replaced.wav", 1)]) + "\n",
                       encoding="utf-8")
    _, changed = run_ingest(cfg)
    assert changed.parts_done == 1 and run.part_fingerprint("ingest", last_batch) is not None
    assert changed.rejected == {} and changed.rows_out == first.rows_out + 1
    assert json.loads(stats_path.read_text())["duplicate_rows"] == []

    stats_path.unlink()  # a missing statistics file is written again
    run_ingest(cfg)
    assert json.loads(stats_path.read_text())["clips"] == changed.rows_out


@pytest.mark.parametrize("fmt,subtype,ext", [("WAV", "PCM_16", "wav"), ("FLAC", "PCM_16", "flac"),
                                             ("OGG", "VORBIS", "ogg"), ("MP3", "MPEG_LAYER_III", "mp3")])
def test_windows_decode_only_their_span_of_a_longer_file(tmp_path, fmt, subtype, ext):
    """Each window's audio is the whole file's decode at that span (MP3 and Vorbis seek sample-exactly too)."""
    from cotaforge.audio import decode_audio

    rate = 22050
    t = np.arange(20 * rate) / rate
    sf.write(tmp_path / f"long.{ext}", 0.3 * np.sin(2 * np.pi * (200 + 20 * t) * t), rate, format=fmt, subtype=subtype)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label,start_s,end_s\nlong.{ext},chirp,2.5,4.5\nlong.{ext},chirp,11,15.25\n"
                        f"long.{ext},chirp,18,\n", encoding="utf-8")
    run, report = run_ingest(make_config(tmp_path / "out", [manifest], group_by=None))
    assert report.rejected_total == 0
    whole = decode_audio(tmp_path / f"long.{ext}").samples
    clips = {c["source_id"]: c for c in read_clips(run, 0, load_run_stats(run), with_audio=True).to_pylist()}
    for source_id, (start_s, end_s) in {f"long.{ext}#t=2.500,4.500": (2.5, 4.5),
                                        f"long.{ext}#t=11.000,15.250": (11.0, 15.25),
                                        f"long.{ext}#t=18.000": (18.0, 20.0)}.items():
        clip = clips[source_id]
        assert clip["group_id"] == f"{clip['source_dataset']}:long.{ext}"  # one recording, one group
        got, _ = sf.read(io.BytesIO(clip["audio_wav"]), dtype="float32")
        want = whole[int(start_s * 16000):int(end_s * 16000)]
        assert len(got) == pytest.approx(len(want), abs=1)
        inner = slice(400, len(want) - 400)  # resampling each window alone differs only at its very edges
        np.testing.assert_allclose(got[inner], want[inner], atol=2e-3)
