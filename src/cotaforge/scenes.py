"""Timelines of sound events and the margin rules that make every multi-event answer certain.

A timeline is the `events` list of a scene (composed by `stages.compose`) or of a real recording with
timestamped labels: one `Event` per audible sound, sorted by onset. The rules here are the one place that
decides whether two events are far enough apart in time, length or level for a listener to be sure of an
answer; compose builds scenes that meet them, and the question planner re-checks them for every question.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

MIN_DURATION_RATIO = 1.5  # durations compared must differ by at least this factor
MIN_LEVEL_DIFF_DB = 6.0  # levels compared must differ by at least this many dB
MIN_GAP_S = 0.25  # silence between counted or ordered events
MIN_ONSET_OPTION_GAP_S = 1.0  # timing options at least this far apart
ONSET_TOLERANCE_S = 0.5  # an open timing answer within this of the true onset is correct


@dataclass(frozen=True)
class Event:
    """One sound in a timeline: what it is, where it came from, and when and how loud it is heard."""

    class_label: str
    source_path: str
    source_id: str
    clip_id: str
    onset_s: float
    offset_s: float
    gain_db: float
    level_dbfs: float

    @property
    def duration_s(self) -> float:
        return self.offset_s - self.onset_s


def events_from_json(text: str) -> list[Event]:
    """The `events` column back into Events ("" and "[]" give an empty timeline)."""
    return [Event(**item) for item in json.loads(text or "[]")]


def events_to_json(events: list[Event]) -> str:
    """Events as the `events` column holds them: sorted by onset, times to 1 ms, levels to 0.1 dB."""
    rows = []
    for e in sorted(events, key=lambda e: (e.onset_s, e.offset_s)):
        row = asdict(e)
        row.update(onset_s=round(e.onset_s, 3), offset_s=round(e.offset_s, 3), gain_db=round(e.gain_db, 1),
                   level_dbfs=round(e.level_dbfs, 1))
        rows.append(row)
    return json.dumps(rows, ensure_ascii=False, separators=(",", ":"))


def durations_distinct(a: Event, b: Event) -> bool:
    shorter, longer = sorted((a.duration_s, b.duration_s))
    return shorter > 0 and longer / shorter >= MIN_DURATION_RATIO


def levels_distinct(a: Event, b: Event) -> bool:
    return abs(a.level_dbfs - b.level_dbfs) >= MIN_LEVEL_DIFF_DB


def separated(a: Event, b: Event) -> bool:
    """No overlap and at least MIN_GAP_S of time between the two events."""
    first, second = sorted((a, b), key=lambda e: e.onset_s)
    return second.onset_s - first.offset_s >= MIN_GAP_S


def all_separated(events: list[Event]) -> bool:
    """Every consecutive pair separated: the events can be counted and ordered surely."""
    ordered = sorted(events, key=lambda e: e.onset_s)
    return all(separated(a, b) for a, b in zip(ordered, ordered[1:]))


def overlaps(a: Event, b: Event) -> bool:
    """The two events sound at the same time for some while."""
    return a.onset_s < b.offset_s and b.onset_s < a.offset_s


def level_above_rest_db(target: Event, events: list[Event]) -> float:
    """How far `target` stands above everything else heard while it sounds: its level minus the power sum of
    the levels of the other events that overlap it (infinite when none does). A mixture's event may be asked
    about when this is at least `compose.min_target_snr_db`."""
    rest = [e for e in events if e != target and overlaps(e, target)]
    if not rest:
        return math.inf
    return target.level_dbfs - 10.0 * math.log10(sum(10.0 ** (e.level_dbfs / 10.0) for e in rest))
