"""compose: labeled clips -> scenes (sequences, repeats, mixtures) whose multi-event answers hold by construction.

Inputs: the ingest parts (audio and index), `ingest/run_stats.json`, the config's `compose` section and
`publish.splits`. Outputs under `compose/`:

    splits.json          group_id -> split for every source group and every scene group (publish reads it)
    sources.parquet      the audible part (16-bit PCM), level and peak of every clip usable as an event
                         (row groups of 64: a batch reads only the groups of its sources); sources.json
                         its fingerprint and notes
    plan/batch-NNNNN.json  that batch's scenes: kind, split, group, events (source, onset, gain), twin link
    plan.json            the plan's fingerprint, report and notes (written last: the plan is complete)
    part-NNNNN.parquet   that batch's scenes as clip rows (CLIP_SCHEMA: WAV audio, facts, `events` timeline)

Later stages see a batch's clips as its ingest clips plus its scenes (`ingest.read_clips`).

Splits are decided by group before any scene is planned, and a scene draws every event from clips of one split
and one source dataset, so no source clip or group reaches two splits through a scene. An event is the
*audible part* of a single-label source clip: leading and trailing 10 ms frames whose peak is below
max(`ingest.silence_peak_dbfs`, the clip's peak - TRIM_RANGE_DB) are cut. Its onset and offset in the scene are
where that part starts and ends; its level is the RMS of the part as it sounds in the scene.

Margin rules (`cotaforge.scenes`) every built scene meets: consecutive events of a sequence or repeat are
separated by at least MIN_GAP_S of silence (crossfaded joins, when configured, are the only overlaps); in a
sequence the longest and the shortest event are 1.5x apart from every event of another class, and in a
sequence or repeat the loudest is 6 dB above every event of another class; in a mixture at least one event
(every foreground event over a background) stands `min_target_snr_db` above what sounds with it. A scene that
would clip is attenuated as a whole, which keeps every level difference.

Failure modes, never fatal: a scene that cannot meet its rules after several draws is not built and counted
by reason (reject rows in `rejects/compose/plan.parquet`): durations_not_distinct, over_max_duration,
background_too_short, no_distinct_scene_left (the clips allow no further distinct scene). A kind without
classes or clips enough is skipped with one note; so is the whole stage when compose is off.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cotaforge import progress
from cotaforge.audio import acoustic_facts, content_hash, dbfs, read_wav_bytes, rms_dbfs, to_pcm16, wav_bytes
from cotaforge.config import RunConfig, stable_hash
from cotaforge.describe import display_label
from cotaforge.models import SAMPLE_RATE_HZ, Rejection, StageReport, count_reasons, merge_reports
from cotaforge.scenes import (MIN_DURATION_RATIO, MIN_GAP_S, MIN_LEVEL_DIFF_DB, Event, events_from_json,
                              events_to_json, level_above_rest_db)
from cotaforge.stages.ingest import load_run_stats, read_clips
from cotaforge.stages.publish import assign_splits
from cotaforge.store import (CLIP_SCHEMA, RunDir, fingerprint, json_dumps, read_table, write_rejects, writing,
                             write_text_atomic)

STAGE = "compose"
STAGE_VERSION = 1  # bump when the code changes what a part or the plan holds
SOURCES_VERSION = 1

FRAME = 160  # 10 ms at 16 kHz: the resolution of trimming
TRIM_RANGE_DB = 40.0  # frames this far below the clip's peak are its silence, even above the digital floor
LEAD_S = (0.1, 0.5)  # silence before the first event and after the last
PEAK_LIMIT = 10 ** (-1.0 / 20)  # scenes peak at -1 dBFS at most: louder ones are attenuated whole
SAFETY_DB = 0.5  # planned level margins exceed the rules by this much
MAX_REPEATS = 5
MAX_MIXTURE_EVENTS = 3
MIN_BACKGROUND_S = 1.0
DRAWS = 30  # draws per scene before it is given up
SOURCE_ROWS_PER_GROUP = 64  # sources.parquet row groups: a batch reads only the groups its events are in


# -- trimming and sources -------------------------------------------------------------------------------------

def audible_bounds(samples: np.ndarray, silence_peak_dbfs: float) -> tuple[int, int]:
    """(start, end) sample of the audible part: from the first to the last 10 ms frame whose peak reaches
    max(silence_peak_dbfs, the clip's peak - TRIM_RANGE_DB). (0, 0) for a clip with no such frame."""
    if not len(samples):
        return 0, 0
    frames = -(-len(samples) // FRAME)
    padded = np.zeros(frames * FRAME, dtype=np.float32)
    padded[:len(samples)] = np.abs(samples)
    peaks = padded.reshape(frames, FRAME).max(axis=1)
    threshold = max(10 ** (silence_peak_dbfs / 20), float(peaks.max()) * 10 ** (-TRIM_RANGE_DB / 20))
    loud = np.flatnonzero(peaks >= threshold)
    if not len(loud) or peaks.max() <= 0:
        return 0, 0
    return int(loud[0] * FRAME), int(min(len(samples), (loud[-1] + 1) * FRAME))


SOURCES_SCHEMA = pa.schema([
    ("source", pa.int64()), ("clip_id", pa.string()), ("source_dataset", pa.string()), ("source_path", pa.string()),
    ("source_id", pa.string()), ("class_label", pa.string()), ("group_id", pa.string()), ("samples", pa.int64()),
    ("level_dbfs", pa.float64()), ("peak_dbfs", pa.float64()), ("pcm16", pa.binary()),
])


def _longest_event_samples(cfg: RunConfig) -> int:
    """An event must leave room for the lead and tail silence of the shortest scene."""
    return int((cfg.compose.max_duration_s - 2 * LEAD_S[0]) * SAMPLE_RATE_HZ)


def _sources_fingerprint(run: RunDir, cfg: RunConfig, stats: dict) -> str:
    upstream = [run.part_fingerprint("ingest", b) for b in range(run.batch_count())]
    return fingerprint(STAGE, "sources", SOURCES_VERSION, upstream, stats["duplicate_rows"],
                       cfg.ingest.silence_peak_dbfs, _longest_event_samples(cfg))


def build_sources(run: RunDir, cfg: RunConfig, stats: dict) -> tuple[pa.Table, list[str]]:
    """Write `compose/sources.parquet` (skipped when its inputs are unchanged) and return it without audio.

    Only single-label clips (not recordings with timed events) whose audible part fits
    `compose.max_duration_s` become sources; the notes say how many clips were left out and why.
    """
    path = run.stage_dir(STAGE) / "sources.parquet"
    # The sidecar is written after the Parquet file: its fingerprint vouches for a complete file.
    sidecar = run.stage_dir(STAGE) / "sources.json"
    fp = _sources_fingerprint(run, cfg, stats)
    columns = [c for c in SOURCES_SCHEMA.names if c != "pcm16"]
    if path.exists() and sidecar.exists():
        stored = json.loads(sidecar.read_text(encoding="utf-8"))
        if stored["fingerprint"] == fp:
            return read_table(path, columns=columns), stored["notes"]
    sidecar.unlink(missing_ok=True)
    longest = _longest_event_samples(cfg)
    multi_label = too_long = timed = 0
    next_source = 0
    with writing(path) as tmp:
        with pq.ParquetWriter(tmp, SOURCES_SCHEMA, compression="zstd") as writer:
            for batch in range(run.batch_count()):
                clips = read_clips(run, batch, stats, with_audio=True, with_scenes=False).to_pylist()
                rows = []
                for clip in clips:
                    if clip["scene_kind"]:
                        timed += 1  # a recording with timed events holds more than its label says
                        continue
                    if len(clip["labels"]) != 1:
                        multi_label += 1
                        continue
                    samples = read_wav_bytes(clip["audio_wav"])
                    start, end = audible_bounds(samples, cfg.ingest.silence_peak_dbfs)
                    if end - start > longest:
                        too_long += 1
                        continue
                    if end <= start:
                        continue
                    part = samples[start:end]
                    rows.append({
                        "source": next_source, "clip_id": clip["clip_id"], "source_dataset": clip["source_dataset"],
                        "source_path": clip["source_path"], "source_id": clip["source_id"],
                        "class_label": clip["class_label"], "group_id": clip["group_id"], "samples": end - start,
                        "level_dbfs": rms_dbfs(part), "peak_dbfs": dbfs(float(np.max(np.abs(part)))),
                        # read_wav_bytes scales by 1/32768, so this gives back the exact PCM of the clip.
                        "pcm16": (part * 32768.0).round().astype("<i2").tobytes(),
                    })
                    next_source += 1
                if rows:
                    writer.write_table(pa.Table.from_pylist(rows, schema=SOURCES_SCHEMA),
                                       row_group_size=SOURCE_ROWS_PER_GROUP)
        notes = []
        if multi_label:
            notes.append(f"{multi_label} clips with several labels not used as scene events (their class is unsure)")
        if timed:
            notes.append(f"{timed} recordings with timed events not used as scene events")
        if too_long:
            notes.append(f"{too_long} clips longer than fits compose.max_duration_s={cfg.compose.max_duration_s:g} "
                         "not used as scene events")
    write_text_atomic(sidecar, json.dumps({"fingerprint": fp, "notes": notes}))
    return read_table(path, columns=columns), notes


def read_splits(run: RunDir) -> dict[str, str]:
    """`compose/splits.json` (group_id -> split); empty when compose did not decide the splits."""
    path = run.stage_dir(STAGE) / "splits.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


# -- planning -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Source:
    index: int
    clip_id: str
    dataset: str
    path: str
    source_id: str
    cls: str
    samples: int
    level_dbfs: float
    peak_dbfs: float


@dataclass
class _Pool:
    """The sources of one (dataset, split): what one scene may draw from."""

    dataset: str
    split: str
    by_class: dict[str, list[_Source]] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return sorted(self.by_class)

    def size(self) -> int:
        return sum(len(v) for v in self.by_class.values())


@dataclass
class _Chain:
    """Events one after another: `joins[i]` samples of silence between item i and i+1 (negative: a crossfade)."""

    lead: int
    items: list[tuple[_Source, float]]  # (source, gain_db)
    joins: list[int]
    tail: int


def _lay_out(chain: _Chain) -> tuple[list[dict], int]:
    """Placed events ({source, onset, gain_db, fade_in, fade_out}, onset-ordered) and the scene length."""
    placed, cursor = [], chain.lead
    for i, (source, gain) in enumerate(chain.items):
        overlap_before = -chain.joins[i - 1] if i and chain.joins[i - 1] < 0 else 0
        overlap_after = -chain.joins[i] if i < len(chain.joins) and chain.joins[i] < 0 else 0
        placed.append({"source": source.index, "onset": cursor, "gain_db": gain, "fade_in": overlap_before,
                       "fade_out": overlap_after})
        cursor += source.samples + (chain.joins[i] if i < len(chain.joins) else 0)
    return placed, cursor + chain.tail


def _events(placed: list[dict], sources: dict[int, _Source]) -> list[Event]:
    """The timeline a plan promises (levels before any whole-scene attenuation, which keeps differences),
    rounded as the `events` column will hold it, so the rules are checked on what is published."""
    events = []
    for p in placed:
        s = sources[p["source"]]
        # A linear fade over a share f of the samples keeps about 1 - 2f/3 of their energy (if it is spread
        # evenly): without this a crossfaded event would be planned louder than it renders.
        kept = 1.0 - (2.0 / 3.0) * (p["fade_in"] + p["fade_out"]) / s.samples
        fade_db = 10.0 * math.log10(max(kept, 1e-6)) if p["fade_in"] or p["fade_out"] else 0.0
        events.append(Event(class_label=display_label(s.cls), source_path=s.path, source_id=s.source_id,
                            clip_id=s.clip_id, onset_s=p["onset"] / SAMPLE_RATE_HZ,
                            offset_s=(p["onset"] + s.samples) / SAMPLE_RATE_HZ, gain_db=p["gain_db"],
                            level_dbfs=s.level_dbfs + p["gain_db"] + fade_db))
    return events_from_json(events_to_json(events))


def scene_problem(kind: str, events: list[Event], min_target_snr_db: float) -> str | None:
    """The first margin rule a scene's timeline breaks, as a reason code; None when it meets all of its kind's."""
    ordered = sorted(events, key=lambda e: (e.onset_s, e.offset_s))
    if kind in ("sequence", "repeat"):
        for a, b in zip(ordered, ordered[1:]):
            # A crossfade is the one overlap allowed; events that do not overlap must be clearly apart.
            if b.onset_s >= a.offset_s and b.onset_s - a.offset_s < MIN_GAP_S - 1e-9:
                return "gap_too_short"
        loudest = max(ordered, key=lambda e: e.level_dbfs)
        if any(loudest.level_dbfs - e.level_dbfs < MIN_LEVEL_DIFF_DB for e in ordered
               if e.class_label != loudest.class_label):
            return "levels_not_distinct"
    if kind == "sequence":
        longest = max(ordered, key=lambda e: e.duration_s)
        shortest = min(ordered, key=lambda e: e.duration_s)
        others_long = [e for e in ordered if e.class_label != longest.class_label]
        others_short = [e for e in ordered if e.class_label != shortest.class_label]
        if any(longest.duration_s < MIN_DURATION_RATIO * e.duration_s for e in others_long) or any(
                e.duration_s < MIN_DURATION_RATIO * shortest.duration_s for e in others_short):
            return "durations_not_distinct"
    if kind == "mixture" and not any(level_above_rest_db(e, ordered) >= min_target_snr_db for e in ordered):
        return "target_masked"
    return None


class _Planner:
    """Draws scenes from the pools with one seeded generator; every draw is checked against the rules."""

    def __init__(self, cfg: RunConfig, sources: dict[int, _Source]) -> None:
        self.c = cfg.compose
        self.rng = random.Random(stable_hash([cfg.run.seed, STAGE, "plan"]))
        self.sources = sources
        self.max_samples = int(self.c.max_duration_s * SAMPLE_RATE_HZ)

    # Level draws: one loudest event 6 dB (plus a safety margin) above the others.
    def _levels(self, count: int) -> list[float]:
        low, high = self.c.level_dbfs
        step = MIN_LEVEL_DIFF_DB + SAFETY_DB
        loud = self.rng.uniform(min(low + 2 * step, high), high)
        levels = [self.rng.uniform(low, loud - step) for _ in range(count)]
        levels[self.rng.randrange(count)] = loud
        return levels

    def _gap(self) -> int:
        return int(self.rng.uniform(*self.c.gap_s) * SAMPLE_RATE_HZ)

    def _lead(self) -> int:
        return int(self.rng.uniform(*LEAD_S) * SAMPLE_RATE_HZ)

    def _chain(self, clips: list[_Source], crossfades: bool) -> _Chain:
        levels = self._levels(len(clips))
        joins = []
        for a, b in zip(clips, clips[1:]):
            if crossfades and self.rng.random() < self.c.crossfade_share:
                joins.append(-min(int(self.c.crossfade_s * SAMPLE_RATE_HZ), a.samples // 2, b.samples // 2))
            else:
                joins.append(self._gap())
        return _Chain(self._lead(), [(s, level - s.level_dbfs) for s, level in zip(clips, levels)], joins,
                      self._lead())

    def sequence(self, pool: _Pool) -> tuple[list[dict], int, _Chain] | str:
        count = self.rng.randint(2, min(self.c.max_events, len(pool.classes)))
        classes = self.rng.sample(pool.classes, count)
        clips = [self.rng.choice(pool.by_class[c]) for c in classes]
        return self._finish_chain("sequence", self._chain(clips, crossfades=True))

    def repeat(self, pool: _Pool) -> tuple[list[dict], int, _Chain] | str:
        repeated = self.rng.choice(pool.classes)
        times = self.rng.randint(2, min(self.c.max_events - 1, MAX_REPEATS))
        others = self.rng.sample([c for c in pool.classes if c != repeated],
                                 self.rng.randint(1, min(self.c.max_events - times, len(pool.classes) - 1)))
        candidates = pool.by_class[repeated]
        # Different recordings of the class where there are enough: a count of one clip copied is too easy.
        clips = (self.rng.sample(candidates, times) if len(candidates) >= times
                 else [self.rng.choice(candidates) for _ in range(times)])
        clips += [self.rng.choice(pool.by_class[c]) for c in others]
        self.rng.shuffle(clips)
        return self._finish_chain("repeat", self._chain(clips, crossfades=False))

    def _finish_chain(self, kind: str, chain: _Chain) -> tuple[list[dict], int, _Chain] | str:
        placed, length = _lay_out(chain)
        if length > self.max_samples:
            return "over_max_duration"
        problem = scene_problem(kind, _events(placed, self.sources), self.c.min_target_snr_db)
        return problem or (placed, length, chain)

    def mixture(self, pool: _Pool) -> tuple[list[dict], int, None] | str:
        snr = self.c.min_target_snr_db + SAFETY_DB
        low, high = self.c.level_dbfs
        backgrounds = [s for c in pool.classes for s in pool.by_class[c]
                       if s.samples >= MIN_BACKGROUND_S * SAMPLE_RATE_HZ]
        if backgrounds and low + snr <= high and self.rng.random() < self.c.background_share:
            return self._over_background(pool, self.rng.choice(backgrounds), snr)
        count = self.rng.randint(2, min(self.c.max_events, MAX_MIXTURE_EVENTS, len(pool.classes)))
        # The others' power adds up: each stays this far below the target so their sum keeps the margin.
        while count > 2 and low + snr + 10 * math.log10(count - 1) > high:
            count -= 1
        margin = snr + 10 * math.log10(count - 1)
        classes = self.rng.sample(pool.classes, count)
        clips = [self.rng.choice(pool.by_class[c]) for c in classes]
        target_level = self.rng.uniform(min(low + margin, high), high)
        onset, placed = self._lead(), []
        target = self.rng.randrange(count)
        for i, clip in enumerate(clips):
            level = target_level if i == target else self.rng.uniform(low, target_level - margin)
            placed.append({"source": clip.index, "onset": onset, "gain_db": level - clip.level_dbfs,
                           "fade_in": 0, "fade_out": 0})
            # The next event starts while this one sounds, so they are heard together.
            onset += max(1, int(self.rng.uniform(0.1, 0.7) * clip.samples))
        return self._finish_mixture(placed)

    def _over_background(self, pool: _Pool, background: _Source, snr: float) -> tuple[list[dict], int, None] | str:
        low, high = self.c.level_dbfs
        classes = [c for c in pool.classes if c != background.cls]
        count = self.rng.randint(1, min(self.c.max_events - 1, MAX_MIXTURE_EVENTS, len(classes)))
        clips = [self.rng.choice(pool.by_class[c]) for c in self.rng.sample(classes, count)]
        gap = int(MIN_GAP_S * SAMPLE_RATE_HZ) + FRAME
        free = background.samples - sum(c.samples for c in clips) - (count - 1) * gap
        if free < 0:
            return "background_too_short"
        # Split the free time at random around the foreground events, which stay apart from one another.
        cuts = sorted(self.rng.randint(0, free) for _ in range(count))
        lead = self._lead()
        background_level = self.rng.uniform(low, high - snr)
        placed = [{"source": background.index, "onset": lead, "gain_db": background_level - background.level_dbfs,
                   "fade_in": 0, "fade_out": 0}]
        for i, clip in enumerate(clips):
            onset = lead + cuts[i] + sum(c.samples for c in clips[:i]) + i * gap
            level = self.rng.uniform(background_level + snr, high)
            placed.append({"source": clip.index, "onset": onset, "gain_db": level - clip.level_dbfs,
                           "fade_in": 0, "fade_out": 0})
        return self._finish_mixture(placed)

    def _finish_mixture(self, placed: list[dict]) -> tuple[list[dict], int, None] | str:
        placed.sort(key=lambda p: (p["onset"], p["onset"] + self.sources[p["source"]].samples))
        length = max(p["onset"] + self.sources[p["source"]].samples for p in placed) + self._lead()
        if length > self.max_samples:
            return "over_max_duration"
        problem = scene_problem("mixture", _events(placed, self.sources), self.c.min_target_snr_db)
        return problem or (placed, length, None)

    def twin(self, kind: str, placed: list[dict], length: int,
             chain: _Chain | None) -> tuple[list[dict], int, dict] | None:
        """The scene with one change that alters a well-defined answer; None when no change keeps the rules.

        sequence: swap the first event with a later one (the first sound changes); repeat: remove one
        occurrence of the repeated class, or repeat another event once (that class's count changes);
        mixture: remove one event heard surely (its class is no longer heard, its count drops to 0).
        """
        options: list[dict] = []
        classes = [self.sources[p["source"]].cls for p in placed]
        if kind == "sequence":
            options = [{"kind": "swap", "events": [0, j]} for j in range(1, len(placed)) if classes[j] != classes[0]]
        elif kind == "repeat":
            counts = {c: classes.count(c) for c in classes}
            repeated = max(counts, key=counts.get)
            options = [{"kind": "remove", "event": i} for i, c in enumerate(classes) if c == repeated]
            if len(placed) < self.c.max_events:
                options += [{"kind": "repeat", "event": i} for i, c in enumerate(classes) if c != repeated]
        elif kind == "mixture" and len(placed) > 1:
            # Only an event heard surely (above what sounds with it) is one whose absence changes an answer.
            events = _events(placed, self.sources)
            options = [{"kind": "remove", "event": i} for i, e in enumerate(events)
                       if level_above_rest_db(e, events) >= self.c.min_target_snr_db]
        self.rng.shuffle(options)
        for change in options:
            if chain is not None:
                twin_chain = _changed_chain(chain, change, self._gap())
                twin_placed, twin_length = _lay_out(twin_chain)
            else:
                twin_placed = [p for i, p in enumerate(placed) if i != change["event"]]
                twin_length = length
            if twin_length > self.max_samples:
                continue
            if scene_problem(kind, _events(twin_placed, self.sources), self.c.min_target_snr_db) is None:
                return twin_placed, twin_length, change
        return None


def _changed_chain(chain: _Chain, change: dict, gap: int) -> _Chain:
    items, joins = list(chain.items), list(chain.joins)
    if change["kind"] == "swap":
        i, j = change["events"]
        items[i], items[j] = items[j], items[i]
        # A crossfade may not overlap more than half of either event it joins.
        joins = [-min(-g, items[k][0].samples // 2, items[k + 1][0].samples // 2) if g < 0 else g
                 for k, g in enumerate(joins)]
    elif change["kind"] == "remove":
        i = change["event"]
        del items[i]
        del joins[min(i, len(joins) - 1)]
    else:
        i = change["event"]
        items.insert(i + 1, items[i])
        joins.insert(i, gap)
    return _Chain(chain.lead, items, joins, chain.tail)


def _allocate(total: int, weights: dict[str, float]) -> dict[str, int]:
    """`total` split by weight, largest remainders first (deterministic)."""
    norm = sum(weights.values())
    exact = {k: total * w / norm for k, w in weights.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: (counts[k] - exact[k], k))[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def _kind_feasible(kind: str, pool: _Pool, cfg: RunConfig) -> bool:
    if len(pool.classes) < 2:
        return False
    return kind != "repeat" or cfg.compose.max_events >= 3


def _compose_enabled(cfg: RunConfig, stats: dict) -> tuple[bool, str]:
    classes = len(stats["classes"])
    if cfg.compose.enabled == "auto":
        if classes < 3:
            return False, f"compose off: the run has {classes} classes (compose.enabled auto needs at least 3)"
        return True, ""
    if not cfg.compose.enabled:
        return False, "compose off: compose.enabled is false"
    return True, ""


def plan_fingerprint(cfg: RunConfig, sources_fp: str, batches: int, manifest_rows: int) -> str:
    publish = cfg.to_dict()["publish"]
    return fingerprint(STAGE, STAGE_VERSION, cfg.section_hash("compose"), publish["splits"], publish["group_splits"],
                       cfg.run.seed, sources_fp, batches, manifest_rows)


def plan_compose(run: RunDir, cfg: RunConfig) -> StageReport:
    """Decide splits, collect sources and plan every scene (no rendering): `compose/splits.json`, `sources.parquet`,
    `plan/batch-N.json`, `plan.json`. Skipped when its inputs are unchanged. The report counts scenes asked,
    planned and not built."""
    started = time.perf_counter()
    stats = load_run_stats(run)
    plan_path = run.stage_dir(STAGE) / "plan.json"
    splits_path = run.stage_dir(STAGE) / "splits.json"
    enabled, off_note = _compose_enabled(cfg, stats)
    if not enabled:
        splits_path.unlink(missing_ok=True)
        _write_plan(run, plan_path, {"fingerprint": fingerprint(STAGE, STAGE_VERSION, "off"), "notes": [off_note]},
                    [])
        return StageReport(stage=STAGE, notes=[off_note], seconds=time.perf_counter() - started)
    table, source_notes = build_sources(run, cfg, stats)
    fp = plan_fingerprint(cfg, _sources_fingerprint(run, cfg, stats), run.batch_count(), run.manifest_rows())
    if plan_path.exists() and splits_path.exists() and all(_scenes_path(run, b).exists()
                                                           for b in range(run.batch_count())):
        stored = json.loads(plan_path.read_text(encoding="utf-8"))
        if stored.get("fingerprint") == fp:
            report = StageReport.model_validate(stored["report"])
            return report.model_copy(update={"parts_skipped": 1, "parts_done": 0, "seconds": 0.0})

    split_of = _decide_splits(run, cfg, stats)
    sources = {row["source"]: _Source(row["source"], row["clip_id"], row["source_dataset"], row["source_path"],
                                      row["source_id"], row["class_label"], row["samples"], row["level_dbfs"],
                                      row["peak_dbfs"]) for row in table.to_pylist()}
    groups = dict(zip(table["source"].to_pylist(), table["group_id"].to_pylist()))
    pools: dict[tuple[str, str], _Pool] = {}
    for index, source in sources.items():
        key = (source.dataset, split_of[groups[index]])
        pools.setdefault(key, _Pool(*key)).by_class.setdefault(source.cls, []).append(source)
    pool_list = [pools[k] for k in sorted(pools)]
    scenes, rejects, notes = _plan_scenes(cfg, pool_list, sources, run.batch_count(), run.manifest_rows())
    for scene in scenes:
        split_of[scene["group_id"]] = scene["split"]
    notes = source_notes + notes
    write_rejects(run.rejects_path(STAGE, "plan"), rejects)
    report = StageReport(stage=STAGE, rows_in=cfg.compose.scenes, rows_out=len(scenes),
                         rejected=count_reasons(rejects), notes=notes, seconds=time.perf_counter() - started,
                         parts_done=1)
    write_text_atomic(splits_path, json.dumps(split_of, sort_keys=True, indent=0))
    _write_plan(run, plan_path, {"fingerprint": fp, "notes": notes, "report": report.model_dump(mode="json")},
                scenes)
    return report


def _write_plan(run: RunDir, plan_path: Path, summary: dict, scenes: list[dict]) -> None:
    """One scene file per batch (a batch reads only its own), then the summary, which marks the plan complete."""
    plan_path.unlink(missing_ok=True)
    by_batch: dict[int, list[dict]] = {b: [] for b in range(run.batch_count())}
    for scene in scenes:
        by_batch[scene["batch"]].append(scene)
    for batch, batch_scenes in by_batch.items():
        write_text_atomic(_scenes_path(run, batch), json.dumps(batch_scenes))
    write_text_atomic(plan_path, json.dumps(summary))


def _scenes_path(run: RunDir, batch: int) -> Path:
    return run.stage_dir(STAGE) / "plan" / f"batch-{batch:05d}.json"


def planned_scenes(run: RunDir, batch: int) -> list[dict]:
    """The scenes planned for one batch (`compose/plan/batch-N.json`)."""
    path = _scenes_path(run, batch)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else []


def _decide_splits(run: RunDir, cfg: RunConfig, stats: dict) -> dict[str, str]:
    """Every source group's split, by clip count per source dataset (the same rule publish uses for samples)."""
    counts: dict[str, dict[str, int]] = {}
    for batch in range(run.batch_count()):
        clips = read_clips(run, batch, stats, with_scenes=False)
        for dataset, group in zip(clips["source_dataset"].to_pylist(), clips["group_id"].to_pylist()):
            counts.setdefault(dataset, {}).setdefault(group, 0)
            counts[dataset][group] += 1
    return assign_splits(counts, cfg.publish.splits, cfg.run.seed, cfg.publish.group_splits)


def _plan_scenes(cfg: RunConfig, pools: list[_Pool], sources: dict[int, _Source], batches: int,
                 manifest_rows: int) -> tuple[list[dict], list[Rejection], list[str]]:
    planner = _Planner(cfg, sources)
    weights = {k: w for k, w in cfg.compose.kinds.items() if w > 0}
    notes: list[str] = []
    feasible = {}
    for kind in list(weights):
        feasible[kind] = [p for p in pools if _kind_feasible(kind, p, cfg)]
        if not feasible[kind]:
            why = ("compose.max_events is 2, and a repeat needs room for 2 occurrences and another sound"
                   if kind == "repeat" and cfg.compose.max_events < 3 else
                   "no split of any source dataset has usable clips of 2 classes")
            notes.append(f"kind {kind} skipped: {why}")
            del weights[kind]
    asked = cfg.compose.scenes
    if not weights:
        return [], [], notes + ["no scene built: no kind can be made from these clips"]
    kinds = [k for k, n in _allocate(asked, weights).items() for _ in range(n)]
    planner.rng.shuffle(kinds)
    scenes: list[dict] = []
    rejects: list[Rejection] = []
    seen: set[tuple] = set()
    originals = 0
    for kind in kinds:
        number = len(scenes)
        reason = "no_distinct_scene_left"
        for _ in range(DRAWS):
            pool = planner.rng.choices(feasible[kind], weights=[p.size() for p in feasible[kind]])[0]
            result = getattr(planner, kind)(pool)
            if isinstance(result, str):
                reason = result
                continue
            placed, length, chain = result
            signature = (kind, tuple(p["source"] for p in placed))
            if signature in seen:
                reason = "no_distinct_scene_left"
                continue
            seen.add(signature)
            batch = originals % batches
            group = f"scene-{pool.split}-{number}"
            scenes.append({"number": number, "kind": kind, "dataset": pool.dataset, "split": pool.split,
                           "group_id": group, "batch": batch, "row_index": manifest_rows + number,
                           "length": length, "events": placed, "twin_of": None, "change": None})
            originals += 1
            # A twin comes right after its original: same pool, split, group and batch (rendered after it).
            if planner.rng.random() < cfg.compose.twin_fraction:
                twin = planner.twin(kind, placed, length, chain)
                if twin is not None and (kind, tuple(p["source"] for p in twin[0])) not in seen:
                    twin_placed, twin_length, change = twin
                    seen.add((kind, tuple(p["source"] for p in twin_placed)))
                    scenes.append({"number": number + 1, "kind": kind, "dataset": pool.dataset, "split": pool.split,
                                   "group_id": group, "batch": batch, "row_index": manifest_rows + number + 1,
                                   "length": twin_length, "events": twin_placed, "twin_of": number,
                                   "change": change})
            break
        else:
            rejects.append(Rejection(stage=STAGE, reason=reason, reasons=[reason],
                                     message=f"compose: a {kind} scene could not be built after {DRAWS} draws "
                                             f"({reason}); it is left out"))
    by_kind = {k: sum(1 for s in scenes if s["kind"] == k and s["twin_of"] is None) for k in cfg.compose.kinds}
    twins = sum(1 for s in scenes if s["twin_of"] is not None)
    notes.append(f"planned {originals} of {asked} scenes asked ("
                 + ", ".join(f"{k} {n}" for k, n in by_kind.items()) + f") and {twins} twins")
    if originals < asked:
        notes.append(f"{asked - originals} scenes not built; reasons in the rejects (the clips allow no more "
                     "under the margin rules)" if rejects else "")
    return scenes, rejects, [n for n in notes if n]


def _load_plan(run: RunDir) -> dict:
    path = run.stage_dir(STAGE) / "plan.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run the compose stage's plan first (`cotaforge compose`)")
    return json.loads(path.read_text(encoding="utf-8"))


# -- rendering ------------------------------------------------------------------------------------------------

def _read_sources(run: RunDir, wanted: set[int]) -> tuple[dict[int, np.ndarray], dict[int, dict]]:
    """The audible parts (float32) and the descriptions of the wanted sources; only their row groups are read."""
    if not wanted:
        return {}, {}
    table = read_table(run.stage_dir(STAGE) / "sources.parquet", filters=[("source", "in", sorted(wanted))])
    audio, meta = {}, {}
    for row in table.to_pylist():
        audio[row["source"]] = np.frombuffer(row.pop("pcm16"), dtype="<i2").astype(np.float32) / 32768.0
        meta[row["source"]] = row
    return audio, meta


def render_scene(scene: dict, audio: dict[int, np.ndarray], meta: dict[int, dict],
                 twin_of_clip: str = "") -> dict:
    """One planned scene as a clip row (CLIP_SCHEMA, with WAV audio): mixed, attenuated if it would clip,
    then measured like any ingested clip; its events carry the levels measured on the rendered signals."""
    mix = np.zeros(scene["length"], dtype=np.float32)
    signals = []
    for p in scene["events"]:
        signal = audio[p["source"]] * np.float32(10 ** (p["gain_db"] / 20))
        if p["fade_in"]:
            signal[:p["fade_in"]] *= np.linspace(0, 1, p["fade_in"], endpoint=False, dtype=np.float32)
        if p["fade_out"]:
            signal[-p["fade_out"]:] *= np.linspace(1, 0, p["fade_out"], endpoint=False, dtype=np.float32)
        mix[p["onset"]:p["onset"] + len(signal)] += signal
        signals.append(signal)
    peak = float(np.max(np.abs(mix))) if len(mix) else 0.0
    attenuation = min(1.0, PEAK_LIMIT / peak) if peak > 0 else 1.0
    if attenuation < 1.0:
        mix *= np.float32(attenuation)
    attenuation_db = dbfs(attenuation)
    events = []
    for p, signal in zip(scene["events"], signals):
        m = meta[p["source"]]
        events.append(Event(class_label=display_label(m["class_label"]), source_path=m["source_path"],
                            source_id=m["source_id"], clip_id=m["clip_id"], onset_s=p["onset"] / SAMPLE_RATE_HZ,
                            offset_s=(p["onset"] + len(signal)) / SAMPLE_RATE_HZ,
                            gain_db=p["gain_db"] + attenuation_db, level_dbfs=rms_dbfs(signal) + attenuation_db))
    pcm16 = to_pcm16(mix)
    clip_id = content_hash(pcm16)
    # Facts from the 16-bit signal, exactly as ingest would measure this WAV.
    facts = acoustic_facts(pcm16.astype(np.float32) / 32768.0)
    labels = list(dict.fromkeys(meta[p["source"]]["class_label"] for p in scene["events"]))
    return {
        "clip_id": clip_id, "group_id": scene["group_id"], "source_dataset": scene["dataset"],
        "source_path": f"scene:{clip_id}", "source_id": "",
        "manifest_row": f"compose/plan/batch-{scene['batch']:05d}.json:scene {scene['number']}",
        "labels": labels, "class_label": labels[0], "metadata": "{}", "original_sample_rate_hz": SAMPLE_RATE_HZ,
        "original_channels": 1, "sample_rate_hz": SAMPLE_RATE_HZ, "facts": facts.model_dump(),
        "scene_kind": scene["kind"], "events": events_to_json(events), "twin_of_clip": twin_of_clip,
        "twin_change": json_dumps(scene["change"]) if scene["change"] else "", "row_index": scene["row_index"],
        "audio_wav": wav_bytes(pcm16),
    }


def batch_fingerprint(run: RunDir, cfg: RunConfig, batch: int) -> str:
    """What `compose/part-<batch>` must be made from; a part that stores another fingerprint is redone."""
    return fingerprint(STAGE, STAGE_VERSION, _load_plan(run)["fingerprint"], batch)


def compose_batch(run: RunDir, cfg: RunConfig, batch: int) -> StageReport:
    """Render the batch's planned scenes into `compose/part-<batch>.parquet`; skip it if already done.

    Reads only the sources its scenes use. A rendered scene that breaks a rule (it should not: the plan
    checked it) becomes a reject row with that reason.
    """
    started = time.perf_counter()
    scenes = planned_scenes(run, batch)
    fp = batch_fingerprint(run, cfg, batch)
    if run.part_fingerprint(STAGE, batch) == fp:
        progress.advance(STAGE, len(scenes))
        return run.stored_report(STAGE, batch)
    wanted = {p["source"] for s in scenes for p in s["events"]}
    audio, meta = _read_sources(run, wanted)
    rows: list[dict] = []
    rejects: list[Rejection] = []
    clip_of: dict[int, str] = {}
    for scene in scenes:
        twin_of = clip_of.get(scene["twin_of"], "") if scene["twin_of"] is not None else ""
        if scene["twin_of"] is not None and not twin_of:
            where = f"compose/plan/batch-{batch:05d}.json:scene {scene['number']}"
            rejects.append(Rejection(stage=STAGE, reason="original_left_out", reasons=["original_left_out"],
                                     manifest_row=where,
                                     message=f"{where}: a twin whose original scene was left out; left out too"))
            continue
        row = render_scene(scene, audio, meta, twin_of)
        problem = scene_problem(scene["kind"], events_from_json(row["events"]), cfg.compose.min_target_snr_db)
        if problem:
            rejects.append(Rejection(stage=STAGE, reason=problem, reasons=[problem], clip_id=row["clip_id"],
                                     manifest_row=row["manifest_row"],
                                     message=f"{row['manifest_row']}: the rendered {scene['kind']} breaks a margin "
                                             f"rule ({problem}); left out"))
            continue
        clip_of[scene["number"]] = row["clip_id"]
        rows.append(row)
        progress.advance(STAGE, 1)
    report = StageReport(stage=STAGE, rows_in=len(scenes), rows_out=len(rows), rejected=count_reasons(rejects),
                         parts_done=1, seconds=time.perf_counter() - started)
    run.write_part(STAGE, batch, pa.Table.from_pylist(rows, schema=CLIP_SCHEMA), fp, rejects, report)
    return report


def summarize_compose(plan_report: StageReport, batch_reports: list[StageReport]) -> StageReport:
    """One report for the stage: scenes asked (in), built (out), not built or left out by reason, notes."""
    total = merge_reports(STAGE, batch_reports)
    total.rows_in = plan_report.rows_in
    total.parts_done += plan_report.parts_done
    total.parts_skipped += plan_report.parts_skipped
    for reason, count in plan_report.rejected.items():
        total.rejected[reason] = total.rejected.get(reason, 0) + count
    total.seconds += plan_report.seconds
    total.notes = plan_report.notes + total.notes
    return total


def run_compose(run: RunDir, cfg: RunConfig) -> StageReport:
    """The whole stage in this process (the flow maps `compose_batch` over batches instead)."""
    plan_report = plan_compose(run, cfg)
    return summarize_compose(plan_report, [compose_batch(run, cfg, b) for b in range(run.batch_count())])
