"""compose: scenes built from real labeled clips, checked against their audio by an independent checker.

The checker below shares no code with the stage: it trims each source clip by the documented rule, finds every
occurrence of it in the scene audio by normalised cross-correlation, fits the events' gains by least squares,
and re-derives counts, order, durations, levels, presence and onsets from what it found.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import correlate

from cotaforge.audio import acoustic_facts, content_hash
from cotaforge.errors import ConfigError
from cotaforge.models import Clip
from cotaforge.stages.compose import plan_compose, planned_scenes, read_splits, run_compose
from cotaforge.stages.ingest import load_run_stats, read_clips, run_ingest
from ..conftest import make_config, run_stages, write_manifest

RATE = 16_000
SCENE_ARGS = ("compose.scenes=36", "compose.twin_fraction=0.5")


# -- the independent checker ----------------------------------------------------------------------------------

def decode(wav: bytes) -> np.ndarray:
    samples, rate = sf.read(io.BytesIO(wav), dtype="float64")
    assert rate == RATE and samples.ndim == 1
    return samples


def audible_part(samples: np.ndarray, floor_dbfs: float = -70.0, range_db: float = 40.0) -> np.ndarray:
    """The documented trimming rule, written again: 10 ms frames, kept from the first to the last frame whose
    peak reaches max(floor, clip peak - 40 dB)."""
    frame = RATE // 100
    count = int(np.ceil(len(samples) / frame))
    peaks = np.array([np.abs(samples[i * frame:(i + 1) * frame]).max() for i in range(count)])
    threshold = max(10 ** (floor_dbfs / 20), peaks.max() * 10 ** (-range_db / 20))
    loud = np.flatnonzero(peaks >= threshold)
    return samples[loud[0] * frame:min(len(samples), (loud[-1] + 1) * frame)]


def placed(length: int, part: np.ndarray, lag: int) -> np.ndarray:
    column = np.zeros(length)
    column[lag:lag + len(part)] = part
    return column


def locate(scene: np.ndarray, parts: dict[str, np.ndarray], min_ncc: float = 0.5) -> list[tuple[int, str]]:
    """Every (lag, clip_id) where a part occurs in the scene, by matching pursuit: the part and lag that explain
    most of what is left (largest cross-correlation) are taken, all parts found so far are fitted jointly by least
    squares, and the search goes on in the residual until nothing left matches a part (normalised
    correlation under `min_ncc`) or nothing is left."""
    residual, found, columns = scene.copy(), [], []
    floor = 1e-3 * np.sqrt(np.mean(scene ** 2)) + 1e-5
    for _ in range(4 * len(parts) + 8):
        if np.sqrt(np.mean(residual ** 2)) < floor:
            break
        best = None
        for cid, part in parts.items():
            if len(part) > len(scene):
                continue
            dot = correlate(residual, part, mode="valid", method="fft")
            lag = int(np.argmax(dot))
            explained = dot[lag] ** 2 / (part @ part)
            if best is None or explained > best[0]:
                best = (explained, lag, cid)
        if best is None:
            break
        _, lag, cid = best
        part = parts[cid]
        window = residual[lag:lag + len(part)]
        if window @ part / (np.linalg.norm(window) * np.linalg.norm(part) + 1e-20) < min_ncc:
            break
        found.append((lag, cid))
        columns.append(placed(len(scene), part, lag))
        basis = np.stack(columns, axis=1)
        gains, *_ = np.linalg.lstsq(basis, scene, rcond=None)
        residual = scene - basis @ gains
    return sorted(found)


def check_scene(row: dict, sources: dict[str, np.ndarray], max_duration_s: float = 30.0) -> dict:
    """Everything a listener could be asked, re-derived from the scene audio; asserts it matches the timeline.
    `row` holds `audio_wav`, `events`, `clip_id`, `scene_kind` and, for a clip row (not a published one), `facts`."""
    scene = decode(row["audio_wav"])
    events = json.loads(row["events"])
    assert events == sorted(events, key=lambda e: (e["onset_s"], e["offset_s"]))
    assert len(scene) / RATE <= max_duration_s + 1e-9
    assert np.abs(scene).max() <= 10 ** (-1 / 20) + 1e-4, "a scene must never reach full scale"
    pcm = sf.read(io.BytesIO(row["audio_wav"]), dtype="int16")[0]
    assert row["clip_id"] == content_hash(pcm.astype("<i2"))
    if "facts" in row:
        assert row["facts"]["clipping_ratio"] == 0
        assert row["facts"] == acoustic_facts(scene.astype(np.float32)).model_dump()

    # Locate each source clip's audible part wherever it occurs.
    parts = {cid: audible_part(sources[cid]) for cid in {e["clip_id"] for e in events}}
    class_of = {e["clip_id"]: e["class_label"] for e in events}
    found = [(lag, class_of[cid], cid) for lag, cid in locate(scene, parts)]
    stated = sorted((e["onset_s"] * RATE, e["class_label"], e["clip_id"]) for e in events)
    assert len(found) == len(stated), (found, stated)
    for (lag, cls, cid), (onset, s_cls, s_cid) in zip(found, stated):
        # Onsets are written to the millisecond: within half of one (8 samples) of where the audio is.
        assert (cls, cid) == (s_cls, s_cid) and abs(lag - onset) <= RATE * 0.0005 + 1, (found, stated)

    # Gains by least squares over all located events; the residual shows nothing else is in the scene.
    parts = [audible_part(sources[cid]) for _, _, cid in found]
    basis = np.stack([placed(len(scene), part, lag) for (lag, _, _), part in zip(found, parts)], axis=1)
    gains, *_ = np.linalg.lstsq(basis, scene, rcond=None)
    residual = scene - basis @ gains
    assert np.sqrt(np.mean(residual ** 2)) < 1e-3 * np.sqrt(np.mean(scene ** 2)) + 1e-4
    measured = []
    for (lag, cls, _), part, gain, event in zip(found, parts, gains, sorted(events, key=lambda e: e["onset_s"])):
        level = 20 * np.log10(np.sqrt(np.mean((gain * part) ** 2)))
        assert abs(20 * np.log10(gain) - event["gain_db"]) < 0.15
        assert abs(level - event["level_dbfs"]) < 0.15
        assert abs((lag + len(part)) / RATE - event["offset_s"]) < 0.0011
        measured.append({"class": cls, "onset": lag / RATE, "offset": (lag + len(part)) / RATE, "level": level})
    derived = derive_answers(measured, row["scene_kind"])
    assert derived == derive_answers([{"class": e["class_label"], "onset": e["onset_s"], "offset": e["offset_s"],
                                       "level": e["level_dbfs"]} for e in events], row["scene_kind"])
    return {"measured": measured, **derived}


def derive_answers(events: list[dict], kind: str) -> dict:
    """The answers a scene of this kind is built to make certain (which the margins then guarantee)."""
    ordered = sorted(events, key=lambda e: e["onset"])
    answers = {"counts": dict(Counter(e["class"] for e in ordered)), "order": [e["class"] for e in ordered],
               "present": sorted({e["class"] for e in ordered})}
    if kind == "sequence":
        answers["longest"] = max(ordered, key=lambda e: e["offset"] - e["onset"])["class"]
        answers["shortest"] = min(ordered, key=lambda e: e["offset"] - e["onset"])["class"]
    if kind in ("sequence", "repeat"):
        answers["loudest"] = max(ordered, key=lambda e: e["level"])["class"]
    return answers


def assert_margins(kind: str, measured: list[dict], snr_db: float = 6.0) -> None:
    ordered = sorted(measured, key=lambda e: e["onset"])
    duration = lambda e: e["offset"] - e["onset"]  # noqa: E731
    if kind in ("sequence", "repeat"):
        for a, b in zip(ordered, ordered[1:]):
            assert b["onset"] - a["offset"] >= 0.25 - 1e-3, "counted and ordered events need 0.25 s between them"
        loud = max(ordered, key=lambda e: e["level"])
        assert all(loud["level"] - e["level"] >= 6 - 0.05 for e in ordered if e["class"] != loud["class"])
    if kind == "sequence":
        long, short = max(ordered, key=duration), min(ordered, key=duration)
        assert all(duration(long) >= 1.5 * duration(e) - 1e-3 for e in ordered if e["class"] != long["class"])
        assert all(duration(e) >= 1.5 * duration(short) - 1e-3 for e in ordered if e["class"] != short["class"])
    if kind == "mixture":
        def above_rest(t):
            rest = [e for e in ordered if e is not t and e["onset"] < t["offset"] and t["onset"] < e["offset"]]
            return np.inf if not rest else t["level"] - 10 * np.log10(sum(10 ** (e["level"] / 10) for e in rest))
        assert max(above_rest(e) for e in ordered) >= snr_db - 0.05


# -- fixtures -------------------------------------------------------------------------------------------------

def compose_run(out: Path, manifests: list[Path], *overrides: str, group_by: str | None = "speaker"):
    cfg = make_config(out, manifests, *overrides, group_by=group_by)
    run, _ = run_ingest(cfg)
    return cfg, run, run_compose(run, cfg)


def scene_rows(run) -> list[dict]:
    return [row for b in range(run.batch_count()) for row in run.read_part("compose", b).to_pylist()]


def source_audio(run) -> dict[str, np.ndarray]:
    stats = load_run_stats(run)
    return {row["clip_id"]: decode(row["audio_wav"]) for b in range(run.batch_count())
            for row in read_clips(run, b, stats, with_audio=True, with_scenes=False).to_pylist()}


@pytest.fixture(scope="module")
def composed(tmp_path_factory, digits_manifest, drums_manifest):
    return compose_run(tmp_path_factory.mktemp("compose") / "out", [digits_manifest, drums_manifest], *SCENE_ARGS)


# -- tests ----------------------------------------------------------------------------------------------------

def test_every_scene_matches_its_audio_and_meets_the_margins(composed):
    cfg, run, report = composed
    rows = scene_rows(run)
    sources = source_audio(run)
    assert {r["scene_kind"] for r in rows} == {"sequence", "repeat", "mixture"}
    for row in rows:
        checked = check_scene(row, sources)
        assert_margins(row["scene_kind"], checked["measured"])
        assert row["labels"] == list(dict.fromkeys(row["labels"]))
        assert [e.replace("_", " ") for e in row["labels"]] == list(dict.fromkeys(checked["order"]))
        assert row["class_label"] == row["labels"][0] and row["source_path"] == f"scene:{row['clip_id']}"
        if row["scene_kind"] == "repeat" and not row["twin_of_clip"]:
            assert max(checked["counts"].values()) >= 2
        if row["scene_kind"] == "mixture" and not row["twin_of_clip"]:
            heard = checked["measured"]
            assert any(a["onset"] < b["offset"] and b["onset"] < a["offset"] for a in heard for b in heard
                       if a is not b), "sounds of a mixture are heard together"


def test_events_name_their_sources_as_the_manifest_wrote_them(composed, digits_manifest, drums_manifest):
    _, run, _ = composed
    written = set()
    for manifest in (digits_manifest, drums_manifest):
        with manifest.open(encoding="utf-8") as handle:
            written |= {(row["path"], row["label"].replace("_", " ")) for row in csv.DictReader(handle)}
    for row in scene_rows(run):
        Clip.model_validate({**{k: v for k, v in row.items() if k in Clip.model_fields},
                             "metadata": json.loads(row["metadata"])})
        for event in json.loads(row["events"]):
            assert set(event) == {"class_label", "source_path", "source_id", "clip_id", "onset_s", "offset_s",
                                  "gain_db", "level_dbfs"}
            assert (event["source_path"], event["class_label"]) in written


def test_downstream_stages_read_scenes_as_clips(composed):
    _, run, report = composed
    stats = load_run_stats(run)
    kinds = Counter(k for b in range(run.batch_count()) for k in read_clips(run, b, stats)["scene_kind"].to_pylist())
    assert kinds[""] == stats["clips"] and sum(kinds.values()) == stats["clips"] + report.rows_out
    assert report.rows_out == len(scene_rows(run)) > 0
    # run_stats still describes the source clips only.
    sources = sum(read_clips(run, b, stats, with_scenes=False).num_rows for b in range(run.batch_count()))
    assert stats["clips"] == sources


def test_no_source_clip_or_group_reaches_two_splits(composed):
    cfg, run, _ = composed
    splits = read_splits(run)
    stats = load_run_stats(run)
    group_of = {r["clip_id"]: r["group_id"] for b in range(run.batch_count())
                for r in read_clips(run, b, stats, with_scenes=False).to_pylist()}
    assert set(group_of.values()) <= set(splits)
    assert set(splits.values()) == set(cfg.publish.splits)
    # Speakers are the groups of the digits: a speaker's clips all share one split.
    reached: dict[str, set[str]] = {cid: {splits[g]} for cid, g in group_of.items()}
    for row in scene_rows(run):
        scene_split = splits[row["group_id"]]
        assert row["group_id"].startswith(f"scene-{scene_split}-")
        for event in json.loads(row["events"]):
            reached[event["clip_id"]].add(scene_split)
    assert all(len(s) == 1 for s in reached.values()), {c: s for c, s in reached.items() if len(s) > 1}


def test_twins_differ_by_their_one_change(composed):
    _, run, _ = composed
    rows = scene_rows(run)
    by_id = {r["clip_id"]: r for r in rows}
    twins = [r for r in rows if r["twin_of_clip"]]
    assert len(twins) >= 5 and {json.loads(t["twin_change"])["kind"] for t in twins} >= {"swap", "remove"}
    for twin in twins:
        original = by_id[twin["twin_of_clip"]]
        assert (twin["group_id"], twin["scene_kind"]) == (original["group_id"], original["scene_kind"])
        change = json.loads(twin["twin_change"])
        before = [e["class_label"] for e in json.loads(original["events"])]
        after = [e["class_label"] for e in json.loads(twin["events"])]
        if change["kind"] == "swap":
            i, j = change["events"]
            swapped = list(before)
            swapped[i], swapped[j] = swapped[j], swapped[i]
            assert after == swapped and after[0] != before[0], "the first sound changes"
        else:
            cls = before[change["event"]]
            delta = -1 if change["kind"] == "remove" else 1
            assert after.count(cls) == before.count(cls) + delta
            assert Counter(a for a in after if a != cls) == Counter(b for b in before if b != cls)


def test_same_seed_same_scenes_other_seed_other_scenes(tmp_path, digits_manifest, drums_manifest):
    cfg, run, _ = compose_run(tmp_path / "out", [digits_manifest, drums_manifest], "compose.scenes=12")
    first = [(r["clip_id"], r["audio_wav"], r["events"]) for r in scene_rows(run)]
    splits = (run.root / "compose" / "splits.json").read_bytes()
    shutil.rmtree(run.root / "compose")
    run_compose(run, cfg)
    assert [(r["clip_id"], r["audio_wav"], r["events"]) for r in scene_rows(run)] == first
    assert (run.root / "compose" / "splits.json").read_bytes() == splits
    other = make_config(tmp_path / "out", [digits_manifest, drums_manifest], "compose.scenes=12", "run.seed=7")
    run_compose(run, other)
    assert {r["clip_id"] for r in scene_rows(run)}.isdisjoint(r[0] for r in first)


def test_rerun_skips_and_changed_compose_config_redoes_compose_onward_only(tmp_path, digits_manifest, drums_manifest):
    from cotaforge.stages.caption import run_caption

    cfg, run, first = compose_run(tmp_path / "out", [digits_manifest, drums_manifest], "compose.scenes=8")
    run_caption(run, cfg)
    _, again = run_ingest(cfg)
    rerun = run_compose(run, cfg)
    assert again.parts_done == 0 and rerun.parts_done == 0 and rerun.parts_skipped == run.batch_count() + 1
    assert run_caption(run, cfg).parts_done == 0
    changed = make_config(tmp_path / "out", [digits_manifest, drums_manifest], "compose.scenes=8",
                          "compose.twin_fraction=1.0")
    _, ingest_again = run_ingest(changed)
    redone = run_compose(run, changed)
    assert ingest_again.parts_done == 0
    assert redone.parts_done == run.batch_count() + 1
    assert run_caption(run, changed).parts_done == run.batch_count()
    captioned = {c for b in range(run.batch_count()) for c in run.read_part("caption", b)["clip_id"].to_pylist()}
    assert {r["clip_id"] for r in scene_rows(run)} <= captioned


def test_too_few_classes_turns_compose_off(tmp_path, digits_manifest):
    two = tmp_path / "two"
    with digits_manifest.open(encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["label"] in {"one", "two"}]
    manifest = write_manifest(two, digits_manifest.parent, rows)
    cfg, run, report = compose_run(tmp_path / "out", [manifest])
    assert report.rows_out == 0 and any("compose off" in n and "2 classes" in n for n in report.notes)
    assert not (run.root / "compose" / "splits.json").exists() and scene_rows(run) == []
    # Asked for explicitly, two classes are enough for every kind.
    cfg, run, report = compose_run(tmp_path / "on", [manifest], "compose.enabled=true", "compose.scenes=6")
    assert report.rows_out >= 6


def test_one_class_builds_nothing_and_says_why(tmp_path, digits_manifest):
    with digits_manifest.open(encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["label"] == "one"]
    manifest = write_manifest(tmp_path / "one", digits_manifest.parent, rows)
    cfg, run, report = compose_run(tmp_path / "out", [manifest], "compose.enabled=true")
    skipped = [n for n in report.notes if n.startswith("kind ")]
    assert len(skipped) == 3 and all("2 classes" in n for n in skipped)
    assert report.rows_out == 0 and scene_rows(run) == []


def test_kinds_without_enough_material_are_skipped_with_a_note(tmp_path, digits_manifest):
    cfg, run, report = compose_run(tmp_path / "out", [digits_manifest], "compose.max_events=2", "compose.scenes=6")
    assert any(n.startswith("kind repeat skipped") for n in report.notes)
    assert {r["scene_kind"] for r in scene_rows(run)} <= {"sequence", "mixture"}
    assert all(len(json.loads(r["events"])) <= 2 for r in scene_rows(run))


def test_more_scenes_than_the_clips_allow_makes_what_it_can(tmp_path, drums_manifest):
    with drums_manifest.open(encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle)]
    firsts = {}
    for r in rows:
        firsts.setdefault(r["label"], r)
    manifest = write_manifest(tmp_path / "tiny", drums_manifest.parent, list(firsts.values())[:3])
    cfg, run, report = compose_run(tmp_path / "out", [manifest], "compose.scenes=300", "compose.kinds={sequence: 1}",
                                   "publish.splits={train: 1.0}", group_by=None)
    built = scene_rows(run)
    # 3 clips of 3 classes: 6 orders of 2 and 6 orders of 3 are every distinct sequence there is.
    arrangements = [tuple(e["clip_id"] for e in json.loads(r["events"])) for r in built]
    assert 0 < len(built) <= 12 and len(set(arrangements)) == len(built) and report.rows_in == 300
    assert sum(report.rejected.values()) == 300 - len([r for r in built if not r["twin_of_clip"]])
    assert any(n.startswith(f"planned {len([r for r in built if not r['twin_of_clip']])} of 300") for n in report.notes)
    rejects = run.rejects("compose")
    assert rejects.num_rows == sum(report.rejected.values())


def test_clips_longer_than_a_scene_are_not_used(tmp_path, drums_manifest):
    cfg, run, report = compose_run(tmp_path / "out", [drums_manifest], "compose.max_duration_s=2",
                                   "compose.scenes=10", group_by=None)
    assert any("longer than fits compose.max_duration_s=2" in n for n in report.notes)
    for row in scene_rows(run):
        assert row["facts"]["duration_s"] <= 2.0
        assert all(e["offset_s"] - e["onset_s"] <= 2.0 - 0.2 for e in json.loads(row["events"]))


def test_loud_sources_are_attenuated_never_clipped(tmp_path, drums_manifest):
    cfg, run, _ = compose_run(tmp_path / "out", [drums_manifest], "compose.level_dbfs=[-15, -3]",
                              "compose.scenes=12", group_by=None)
    rows = scene_rows(run)
    sources = source_audio(run)
    attenuated = 0
    for row in rows:
        checked = check_scene(row, sources)
        assert_margins(row["scene_kind"], checked["measured"])
        attenuated += np.abs(decode(row["audio_wav"])).max() > 0.85
    assert attenuated > 0, "levels this high must have needed attenuation somewhere"


def test_crossfaded_joins_overlap_and_are_recorded(tmp_path, drums_manifest):
    cfg, run, _ = compose_run(tmp_path / "out", [drums_manifest], "compose.kinds={sequence: 1}",
                              "compose.crossfade_share=1.0", "compose.crossfade_s=0.05", "compose.scenes=6",
                              group_by=None)
    for row in scene_rows(run):
        events = json.loads(row["events"])
        assert all(b["onset_s"] < a["offset_s"] for a, b in zip(events, events[1:]))


@pytest.mark.parametrize("override, key", [
    ("compose.gap_s=[0.1, 0.5]", "compose.gap_s"),
    ("compose.level_dbfs=[-20, -12]", "compose.level_dbfs"),
    ("compose.max_events=9", "compose.max_events"),
    ("compose.kinds={sequence: 0}", "compose.kinds"),
    ("compose.twin_fraction=1.5", "compose.twin_fraction"),
])
def test_config_bounds(tmp_path, digits_manifest, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make_config(tmp_path, [digits_manifest], override)


def test_plan_report_says_what_was_built(composed):
    _, run, report = composed
    planned = [s for b in range(run.batch_count()) for s in planned_scenes(run, b)]
    kinds = Counter(s["kind"] for s in planned if s["twin_of"] is None)
    assert {s["batch"] for s in planned} == set(range(run.batch_count()))
    note = next(n for n in report.notes if n.startswith("planned "))
    assert all(f"{k} {kinds[k]}" in note for k in ("sequence", "repeat", "mixture"))
    assert plan_compose(run, composed[0]).parts_skipped == 1


@pytest.fixture(scope="module")
def published(tmp_path_factory, digits_manifest, drums_manifest):
    """A whole run with scenes, ingest to publish."""
    cfg = make_config(tmp_path_factory.mktemp("published") / "out", [digits_manifest, drums_manifest],
                      "compose.scenes=12", "compose.twin_fraction=0.5")
    run, _ = run_ingest(cfg)
    run_compose(run, cfg)
    run, reports = run_stages(cfg)  # ingest again (skipped), then caption to publish over the scenes
    return cfg, run, reports


def test_published_scenes_carry_their_audio_and_the_planned_splits(published):
    import pyarrow.parquet as pq

    from cotaforge.stages.publish import dataset_dir

    cfg, run, _ = published
    shards = sorted((dataset_dir(cfg) / "data").glob("*.parquet"))
    rows = [r for path in shards for r in pq.read_table(path).to_pylist()]
    scenes = {r["clip_id"]: r for r in scene_rows(run)}
    splits = read_splits(run)
    published_scenes = [r for r in rows if r["clip_id"] in scenes]
    assert published_scenes, "scene samples reach the dataset"
    reached: dict[str, set[str]] = {}
    for row in rows:
        assert row["split"] == splits[row["group_id"]]
        if row["clip_id"] in scenes:
            assert row["audio"]["bytes"] == scenes[row["clip_id"]]["audio_wav"]
            for event in json.loads(scenes[row["clip_id"]]["events"]):
                reached.setdefault(event["clip_id"], set()).add(row["split"])
        else:
            reached.setdefault(row["clip_id"], set()).add(row["split"])
    assert all(len(s) == 1 for s in reached.values()), {c: s for c, s in reached.items() if len(s) > 1}


def test_review_serves_scene_audio(published):
    from cotaforge.review.samples import RunSamples

    cfg, run, _ = published
    samples = RunSamples(run, cfg)
    scene = scene_rows(run)[0]
    assert samples.audio_wav(scene["clip_id"]) == scene["audio_wav"]
    assert samples.clip(scene["clip_id"])["events"] == scene["events"]


def answer_from_audio(target: str, asked: list[str], heard: list[dict]) -> str:
    """A published scene question's answer, worked out from the events the checker located in the audio."""
    ordered = sorted(heard, key=lambda e: e["onset"])
    classes = [e["class"] for e in ordered]
    length = lambda e: e["offset"] - e["onset"]  # noqa: E731
    if target == "scene.count":
        return str(classes.count(asked[0]) if asked else len(classes))
    if target in ("scene.first", "scene.last"):
        return classes[0] if target == "scene.first" else classes[-1]
    if target == "scene.after":
        return classes[classes.index(asked[0]) + 1]
    if target == "scene.before":
        return "yes" if classes.index(asked[0]) < classes.index(asked[1]) else "no"
    if target in ("scene.longest", "scene.shortest"):
        return (max if target == "scene.longest" else min)(ordered, key=length)["class"]
    if target == "scene.loudest":
        return max(ordered, key=lambda e: e["level"])["class"]
    if target == "scene.louder":
        return max(asked, key=lambda c: max(e["level"] for e in ordered if e["class"] == c))
    if target == "scene.present":
        return "yes" if asked[0] in classes else "no"
    if target == "scene.onset":
        return f"{next(e['onset'] for e in ordered if e['class'] == asked[0]):.3f}"
    raise ValueError(f"unknown scene target {target}")


def test_published_scene_answers_agree_with_the_audio(published):
    import pyarrow.parquet as pq

    from cotaforge.stages.publish import dataset_dir

    cfg, run, _ = published
    sources = source_audio(run)
    heard, checked = {}, Counter()
    shards = sorted((dataset_dir(cfg) / "data").glob("*.parquet"))
    for row in (r for path in shards for r in pq.read_table(path).to_pylist()):
        if not row["target"].startswith("scene."):
            continue
        if row["clip_id"] not in heard:
            scene = {"audio_wav": row["audio"]["bytes"], "events": row["events"], "clip_id": row["clip_id"],
                     "scene_kind": row["scene_kind"]}
            heard[row["clip_id"]] = check_scene(scene, sources)["measured"]
        answer = answer_from_audio(row["target"], json.loads(row["asked_value"]), heard[row["clip_id"]])
        if row["target"] == "scene.onset":
            assert abs(float(answer) - float(row["target_value"])) <= 0.05 + 1e-9, row["sample_id"]
        else:
            assert answer == row["target_value"], (row["target"], row["asked_value"], row["target_value"], answer)
        checked[row["target"]] += 1
    assert len(checked) >= 8, checked
