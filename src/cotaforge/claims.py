"""Numbers a chain of thought states, read back out of its text and checked against what was measured.

Two readers, used by validate:

- `fact_contradictions`: every measured quantity stated with a unit (seconds or milliseconds, Hz or kHz,
  dBFS, and counts of onsets or attacks) must lie within a tolerance of a value the sample rests on (the
  clip's facts, the comparison's reference, a scene's event times, lengths and levels). A hedged number
  ("about 2 seconds", "around 1.2 kHz") is allowed the rounding its precision implies; a range ("between 200
  and 400 Hz", "from 0.3 to 0.8 s", "0.3-0.8 s") must contain a measured value.
- `timeline_contradictions` (scenes): a time tied to a sound ("the kick, around 1.1 s") must be within
  `scenes.ONSET_TOLERANCE_S` of that sound's start, end or length; a count ("heard 3 times", "I hear 4
  sounds") must equal the timeline's; an order ("X comes first", "X is heard before Y") must hold.

A time or count is tied to the sound named nearest before it in its clause (else nearest after it). In a
clause that quotes sound names (as the template teacher does), only quoted names count as mentions, so a
class called "one" is not found in "the next one". Both readers return human-readable contradictions ([] =
none). `ClipClaims` runs both for the many samples of one clip, with what they share worked out once.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from cotaforge.scenes import ONSET_TOLERANCE_S, Event

NUMBER_WORDS = {"zero": 0, "no": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
                "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "once": 1, "twice": 2, "thrice": 3}
_NUM = r"-?\d+(?:\.\d+)?"
_HEDGE_WORDS = ("about", "around", "roughly", "approximately", "approx.", "approx", "nearly", "almost", "some",
                "close to", "near", "circa")
_HEDGE = "(?:" + "|".join(re.escape(word) for word in _HEDGE_WORDS) + "|~)"
_UNITS = r"khz|hz|dbfs|db fs|milliseconds?|ms|seconds?|secs?|s"
# The number comes first in the pattern (a hedge before it is looked for separately): scanning for a digit
# is several times faster than trying an optional hedge at every position. And the pattern opens with a
# character class, [-\d], which the regex engine skips to without trying the rest at every position; the
# lookbehinds after it make it `(?<![\w.])-?\d+(?:\.\d+)?`.
_MEASURE = re.compile(
    rf"(?P<lo>[-\d](?<![\w.][-\d])(?:(?<=-)\d+|(?<=\d)\d*)(?:\.\d+)?)"
    rf"(?:\s*(?:-|–|to|and)\s*(?P<hi>{_NUM}))?\s*-?\s*(?P<unit>{_UNITS})(?![\w])")
_SECONDS = frozenset({"s", "sec", "secs", "second", "seconds", "ms", "millisecond", "milliseconds"})
_UNIT_FAMILY = {"khz": (1000.0, "hz"), "hz": (1.0, "hz"), "dbfs": (1.0, "dbfs"), "db fs": (1.0, "dbfs"),
                "ms": (0.001, "s"), "millisecond": (0.001, "s"), "milliseconds": (0.001, "s"),
                **{unit: (1.0, "s") for unit in ("s", "sec", "secs", "second", "seconds")}}
_COUNT_WORD = r"\d+|" + "|".join(w for w in NUMBER_WORDS if w not in ("no", "once", "twice", "thrice"))
_ONSETS = re.compile(rf"(?P<hedge>\b{_HEDGE}\s+)?(?<![\w.])(?P<n>{_COUNT_WORD})\s+(?:distinct\s+|separate\s+|clear\s+|"
                     rf"sharp\s+)?(?:onsets|attacks)\b")
_TIMES = re.compile(rf"(?<![\w.])(?:(?P<n>{_COUNT_WORD})\s+times?|(?P<w>once|twice|thrice))\b"
                    r"(?!\s+(?:as|longer|louder|more|shorter|quieter|softer|longer|bigger|faster|slower|over)\b)")
_TOTAL = re.compile(
    rf"\b(?:hear|heard|count|counted|are|were|is|makes?|contains?|holds?|total of|of)\s+(?:exactly\s+|only\s+|"
    rf"just\s+)?(?P<n>{_COUNT_WORD})\s+(?:separate\s+|distinct\s+|different\s+|individual\s+)?(?:sounds|sound events|"
    rf"events)\b|\b(?P<m>{_COUNT_WORD})\s+(?:separate\s+|distinct\s+|different\s+|individual\s+)?(?:sounds|sound "
    rf"events|events)\s+(?:in total|in all|altogether)\b")
_RELATIVE_AFTER = re.compile(r"\s*(?:later|earlier|before|after|apart|of silence|of quiet|gap|pause|longer|shorter|"
                             r"sooner|in between)\b")
_RELATIVE_BEFORE_WORDS = ("gap", "pause", "silence", "interval", "break", "difference", "within")
_RELATIVE_BEFORE = re.compile(rf"(?:{'|'.join(_RELATIVE_BEFORE_WORDS)})\s+(?:of\s+)?(?:about\s+|"
                              r"around\s+|roughly\s+|some\s+)?$")
_ADJECTIVE = re.compile(r"\d\s*-\s*s")  # "4.20-second": a length said of the whole recording


class Measure(NamedTuple):
    """One stated quantity: a value (or a range), its unit family, and how much rounding it allows."""

    unit: str  # "s", "hz", "dbfs" or "onsets"
    low: float
    high: float
    slack: float  # the stated precision's rounding, allowed when the number is hedged
    text: str
    start: int = 0  # where the number begins in the normalized text
    end: int = 0
    raw_unit: str = ""


@dataclass(frozen=True)
class Reading:
    """A text read once: normalized (case-folded, single-spaced, minus signs as "-") and its quantities."""

    text: str
    measures: list[Measure]


def normalize(text: str) -> str:
    """Case-folded, single-spaced, with a minus sign ("\u2212", "minus ") written "-"."""
    return " ".join(text.replace("\u2212", "-").replace("minus ", "-").casefold().split())


_normalize = lru_cache(maxsize=4096)(normalize)  # sound names: the same few, over and over


def read(text: str) -> Reading:
    """Normalize a text and find its quantities, once for every check that reads it."""
    norm = normalize(text)
    return Reading(norm, _measures_in(norm))


def _precision(number: str) -> float:
    dot = number.find(".")
    decimals = len(number) - dot - 1 if dot >= 0 else 0
    return 0.5 * 10 ** -decimals


# No quantity's text holds one of these marks followed by a space, and none reads a hedge across one, so a text
# read piece by piece gives the same quantities as read whole.
_PIECE_BREAK = re.compile(r"[.,;:!?] ")


def pieces(text: str) -> list[str]:
    """`text` cut after each ". ", ", ", "; ", ": ", "! " and "? ": the pieces `measures` reads one by one."""
    return _PIECE_BREAK.split(text)


def measures(text: str) -> list[Measure]:
    """Every quantity stated with a unit, in SI-like units (seconds, Hz, dBFS, onsets).

    Read piece by piece (see `pieces`), each piece's reading cached: the samples of one clip share many
    phrases (its caption's, its facts' "0.54 seconds long", "peaking at -7.1 dBFS") in sentences worded
    differently, so a batch reads each phrase once. (Positions are per piece; a scene's timeline check reads
    the whole text instead, with `read`.)
    """
    return [m for piece in _PIECE_BREAK.split(text) for m in _piece_measures(piece)]


# A quantity needs a digit, or is a count of onsets or attacks ("three sharp attacks"): many pieces have neither,
# and this test is cheaper than normalizing and scanning them.
_MAY_MEASURE = re.compile(r"\d|onsets|attacks", re.IGNORECASE)


@lru_cache(maxsize=65536)
def _piece_measures(piece: str) -> tuple[Measure, ...]:
    if _MAY_MEASURE.search(piece) is None:
        return ()
    return tuple(read(piece).measures)


def _measures_in(text: str) -> list[Measure]:
    """The quantities of a normalized text; one scan for numbers with units (a few per text)."""
    found: list[Measure] = []
    for m in _MEASURE.finditer(text):
        lo, hi, unit = m.group("lo", "hi", "unit")
        scale, family = _UNIT_FAMILY[unit]
        low = float(lo) * scale
        high = float(hi) * scale if hi else low
        if family != "dbfs" and (low < 0 or high < 0):
            continue  # "-" before a time or frequency is a dash, not a sign
        start = m.start()
        hedged = _hedged(text, start)
        slack = _precision(hi or lo) * scale if hedged else 0.0
        if high < low:
            low, high = high, low
        found.append(Measure(family, low, high, slack, m.group(0), start, m.end(), unit))
    for word in ("onsets", "attacks"):
        if word not in text:
            continue
        for at in _occurrences(text, word):
            for m in _ONSETS.finditer(text, _back(text, at, 40), at + len(word)):
                if m.end() == at + len(word):
                    n = m["n"]
                    value = float(n) if n.isdigit() else float(NUMBER_WORDS[n])
                    found.append(Measure("onsets", value, value, 1.0 if m["hedge"] else 0.0, m.group(0), m.start("n"),
                                         m.end()))
    return found


_HEDGES_ENDING_IN = {c: tuple(w for w in _HEDGE_WORDS if w[-1] == c) for c in {w[-1] for w in _HEDGE_WORDS}}


def _hedged(text: str, start: int) -> bool:
    """Whether a hedge ("about", "~", ...) stands right before `start`, only white space between: a hedge word
    beginning a word, within the 16 characters before it. String tests, not a regex search per number."""
    low = max(0, start - 16)
    end = start
    while end > low and text[end - 1].isspace():
        end -= 1
    if end > low and text[end - 1] == "~":
        return True
    for word in _HEDGES_ENDING_IN.get(text[end - 1], ()) if end > low else ():
        if text.endswith(word, low, end):
            at = end - len(word)  # the word must begin a word (regex \b)
            if at == 0 or not (text[at - 1].isalnum() or text[at - 1] == "_"):
                return True
    return False


# Tolerances per unit: an absolute part and a relative part of the value (before any hedged rounding).
FACT_TOLERANCE = {"s": (0.1, 0.1), "hz": (10.0, 0.08), "dbfs": (1.5, 0.0), "onsets": (0.0, 0.0)}


def _supported(measure: Measure, references: dict[str, list[float]]) -> bool:
    """Whether some reference value of the measure's unit lies within tolerance of it (a unit with no
    reference values is not checked: nothing was measured to compare with)."""
    values = references.get(measure.unit)
    if not values:
        return True
    absolute, relative = FACT_TOLERANCE[measure.unit]
    low, high, slack = measure.low, measure.high, measure.slack
    for v in values:
        tolerance = absolute + relative * abs(v) + slack
        if low - tolerance <= v <= high + tolerance:
            return True
    return False


def _problems(found: list[Measure], references: dict[str, list[float]]) -> list[str]:
    problems = []
    for measure in found:
        if not _supported(measure, references):
            values = references[measure.unit]
            nearest = min(values, key=lambda v: min(abs(v - measure.low), abs(v - measure.high)))
            problems.append(f'"{measure.text}" is off from the measured {nearest:g} {measure.unit}')
    return problems


def fact_contradictions(text: str | Reading, references: dict[str, list[float]]) -> list[str]:
    """Quantities in `text` (or a `Reading` of it) that no reference value of their unit supports.

    `references` maps "s", "hz", "dbfs" and "onsets" to the values the sample may speak of; a unit with no
    reference values is not checked (nothing was measured to compare with).
    """
    return _problems(text.measures if isinstance(text, Reading) else measures(text), references)


def fact_references(facts: dict, grounding: dict | None = None, events: list[Event] | None = None,
                    extra_seconds: list[float] | None = None) -> dict[str, list[float]]:
    """The values a sample's CoT may state: the clip's facts, a comparison's reference, a scene's events."""
    seconds = [facts["duration_s"], 0.0, *(extra_seconds or [])]
    hz = [facts[k] for k in ("spectral_centroid_hz", "f0_median_hz") if facts.get(k)]
    dbfs = [facts["loudness_dbfs"], facts["peak_dbfs"]]
    if grounding and "reference_value" in grounding:
        unit = {"duration_s": seconds, "f0_median_hz": hz, "loudness_dbfs": dbfs}.get(grounding.get("fact", ""))
        if unit is not None:
            unit.append(float(grounding["reference_value"]))
    ordered = sorted(events or [], key=lambda e: e.onset_s)
    for e in ordered:
        seconds += [e.onset_s, e.offset_s, e.duration_s]
        dbfs.append(e.level_dbfs)
    seconds += [b.onset_s - a.offset_s for a, b in zip(ordered, ordered[1:]) if b.onset_s > a.offset_s]
    return {"s": seconds, "hz": hz, "dbfs": dbfs, "onsets": [float(facts["onset_count"])]}


class ClipClaims:
    """The claim checks for the many samples of one clip, with what they share worked out once.

    The samples of a clip state mostly the same phrases (its caption's, its facts') and the same numbers, and
    rest on the same facts and timeline. So the clip's own reference values (`fact_references` without a
    sample's comparison or options) and its timeline's counts, order and times are derived once, each
    piece's (see `pieces`; for a whole-text `Reading`, each number's) verdict against those references is kept,
    and only a number they do not support is checked again against everything its sample may speak of.
    The verdicts are the same as `fact_contradictions` and `timeline_contradictions` give. Not thread-safe;
    meant to live as long as one batch (it grows with the distinct pieces it sees).
    """

    def __init__(self, facts: dict, events: list[Event] | None = None) -> None:
        self.facts = facts
        self.events = list(events or [])
        self.references = fact_references(facts, None, self.events)
        self.timeline = Timeline(self.events, facts["duration_s"]) if self.events else None
        self._texts: dict[str, tuple[Measure, ...]] = {}  # whole text -> the same
        self._pieces: dict[str, tuple[Measure, ...]] = {}  # piece of text -> its numbers the references don't support
        self._numbers: dict[tuple[str, float, float, float], bool] = {}  # (unit, low, high, slack) -> supported

    def _unsupported(self, text: str | Reading) -> list[Measure]:
        """The numbers of `text` that the clip's own references do not support."""
        found: list[Measure] = []
        if isinstance(text, Reading):
            for m in text.measures:
                key = (m.unit, m.low, m.high, m.slack)
                supported = self._numbers.get(key)
                if supported is None:
                    supported = self._numbers[key] = _supported(m, self.references)
                if not supported:
                    found.append(m)
            return found
        known = self._texts.get(text)  # a caption, repeated word for word by many of the clip's samples
        if known is not None:
            return list(known)
        for piece in _PIECE_BREAK.split(text):  # as `measures` reads it
            unsupported = self._pieces.get(piece)
            if unsupported is None:
                measured = _piece_measures(piece)
                unsupported = self._pieces[piece] = tuple(
                    m for m in measured if not _supported(m, self.references)) if measured else ()
            if unsupported:
                found += unsupported
        self._texts[text] = tuple(found)
        return found

    def fact_contradictions(self, text: str | Reading | list[str], grounding: dict | None = None,
                            extra_seconds: list[float] | None = None) -> list[str]:
        """`fact_contradictions(text, fact_references(facts, grounding, events, extra_seconds))`, cached;
        `text` may be a list of texts (a sample's fields), each read on its own."""
        if isinstance(text, list):
            unsupported = [m for field in text for m in self._unsupported(field)]
        else:
            unsupported = self._unsupported(text)
        if not unsupported:  # a sample's references only add values to the clip's
            return []
        return _problems(unsupported, fact_references(self.facts, grounding, self.events, extra_seconds))

    def timeline_contradictions(self, text: str | Reading, asked: list[str] | None = None,
                                option_seconds: list[float] | None = None) -> list[str]:
        """`timeline_contradictions(text, events, duration_s, asked, option_seconds)`; [] for a single clip."""
        if self.timeline is None:
            return []
        return self.timeline.contradictions(text, asked, option_seconds)


# -- timelines -------------------------------------------------------------------------------------------------


_TOKEN = re.compile(r"\x01(?P<k>[a-z]+)\x02")


def _token(k: int) -> str:
    """A stand-in for the k-th sound name: letters only, so no pattern for numbers or words reads into it."""
    return "\x01" + "".join(chr(97 + int(d)) for d in str(k)) + "\x02"


@lru_cache(maxsize=1024)
def _name_order(names: tuple[str, ...]) -> tuple[list[int], list[tuple[int, int]]]:
    """The name indices longest first (mentions of longer names are found first), and the pairs (a, b) of
    names where a lies inside b: worked out once per set of names, not once per text."""
    longest_first = sorted(range(len(names)), key=lambda i: -len(names[i]))
    return longest_first, [(a, b) for a in range(len(names)) for b in range(len(names))
                           if a != b and names[a] in names[b]]


def _mention_spans(text: str, names: tuple[str, ...], quoted: bool) -> list[tuple[int, int, int]]:
    """(start, end, name index) of every mention of a sound: quoted ('"kick"') or as a whole word."""
    spans: list[tuple[int, int, int]] = []
    longest_first, nested_pairs = _name_order(names)
    present = [k for k in longest_first if names[k] in text]
    # Only when one name lies inside another ("hihat" in "hihat open") can two mentions overlap.
    nested = any(a in present and b in present for a, b in nested_pairs)
    for k in present:
        needle = f'"{names[k]}"' if quoted else names[k]
        for start in _occurrences(text, needle):
            end = start + len(needle)
            whole = quoted or ((start == 0 or not (text[start - 1].isalnum() or text[start - 1] == "_")) and
                               (end == len(text) or not (text[end].isalnum() or text[end] == "_")))
            if whole and not (nested and any(s < end and start < e for s, e, _ in spans)):
                spans.append((start, end, k))
    return sorted(spans)


def _tokenize(clause: str, spans: list[tuple[int, int, int]]) -> str:
    """The clause with each mention replaced by its token and quotes dropped (for the order patterns)."""
    out, at = [], 0
    for start, end, k in spans:
        out += [clause[at:start].replace('"', " "), _token(k)]
        at = end
    out.append(clause[at:].replace('"', " "))
    return "".join(out)


def _tied(position: int, mentions: list[tuple[int, str]]) -> str | None:
    """The sound named nearest before `position` in the clause, else the nearest after it."""
    before = None
    for start, name in mentions:
        if start < position:
            before = (name,)
    if before is not None:
        return before[0]
    for start, name in mentions:
        if start > position:
            return name
    return None


def _count(token: str) -> int | None:
    if token.isdigit():
        return int(token)
    return NUMBER_WORDS.get(token)


_ORDER_VERB = r"(?:\s+sound)?\s*(?:is heard|is played|comes|starts|begins|occurs|plays|sounds|is)?\s*"


class Timeline:
    """A timeline's counts, order and times, derived once for every text checked against it."""

    def __init__(self, events: list[Event], duration_s: float) -> None:
        self.ordered = ordered = sorted(events, key=lambda e: (e.onset_s, e.offset_s))
        self.duration_s = duration_s
        self.by_class: dict[str, list[Event]] = {}
        for e in ordered:
            self.by_class.setdefault(_normalize(e.class_label), []).append(e)
        self.names = tuple(sorted(self.by_class))
        self.onsets = {n: [e.onset_s for e in found] for n, found in self.by_class.items()}
        self.first = _normalize(ordered[0].class_label) if ordered else ""
        self.last = _normalize(max(ordered, key=lambda e: e.onset_s).class_label) if ordered else ""
        self.unowned = [0.0, duration_s, *(v for e in ordered for v in (e.onset_s, e.offset_s, e.duration_s))]
        self.counts = {name: len(found) for name, found in self.by_class.items()}
        self.times_of = {name: [v for e in found for v in (e.onset_s, e.offset_s, e.duration_s)]
                         for name, found in self.by_class.items()}

    def contradictions(self, text: str | Reading, asked: list[str] | None = None,
                       option_seconds: list[float] | None = None) -> list[str]:
        """See `timeline_contradictions`."""
        ordered, by_class = self.ordered, self.by_class
        if not ordered:
            return []
        names = self.names
        if asked:
            extra = {_normalize(a) for a in asked} - by_class.keys()
            if extra:  # a sound asked about that is not in the scene (e.g. "is X in the recording")
                names = tuple(sorted({*names, *extra}))
        unowned = self.unowned + option_seconds if option_seconds else self.unowned
        counts, times_of, duration_s = self.counts, self.times_of, self.duration_s
        problems: list[str] = []
        for claim in _text_claims(text if isinstance(text, Reading) else read(text), names):
            kind, said = claim[0], claim[-1]
            if kind == "time":
                _, owner, value, adjective, _ = claim
                allowed = unowned
                if owner:  # a time tied to a sound is one of its times, or the recording's length ("4.2-second")
                    allowed = times_of.get(owner, []) + ([duration_s] if adjective else [])
                if owner and owner not in by_class:
                    problems.append(f'"{said}" is given for "{owner}", which is not in the scene')
                elif not any(abs(value - v) <= ONSET_TOLERANCE_S for v in allowed):
                    whose = f' of "{owner}"' if owner else ""
                    problems.append(f'"{said}"{whose} matches no start, end or length in the timeline')
            elif kind == "count":
                _, owner, n, _ = claim
                if owner is not None and counts.get(owner, 0) != n:
                    problems.append(f'"{owner}" is said to be heard {n} times; the timeline has {counts.get(owner, 0)}')
                elif owner is None and n not in counts.values() and n != len(ordered):
                    problems.append(f'"{said}" matches no count of any sound in the timeline')
            elif kind == "total":
                if claim[1] != len(ordered):
                    problems.append(f'"{said}": the timeline has {len(ordered)} sounds')
            elif kind in ("first", "last"):
                truth = self.first if kind == "first" else self.last
                if len(ordered) > 1 and claim[1] != truth:
                    problems.append(f'"{said}": the {kind} sound is "{truth}"')
            elif kind == "order":
                _, earlier, later, _ = claim
                # Holds when some occurrence of the earlier-named sound starts before some occurrence of the other.
                if not any(a < b for a in self.onsets.get(earlier, []) for b in self.onsets.get(later, [])):
                    problems.append(f'"{said}" contradicts the timeline\'s order')
        return problems


def timeline_contradictions(text: str | Reading, events: list[Event], duration_s: float,
                            asked: list[str] | None = None, option_seconds: list[float] | None = None) -> list[str]:
    """Times, counts and order stated in `text` that the timeline does not bear out.

    `asked` are the sounds the question names (one may be absent from the timeline, e.g. "is X in the
    recording"); `option_seconds` the times a multiple-choice question offers, which a text may quote.
    To check many texts against one timeline, build its `Timeline` (or the clip's `ClipClaims`) once.
    """
    return Timeline(events, duration_s).contradictions(text, asked, option_seconds)


def _text_claims(reading: Reading, names: tuple[str, ...]) -> list[tuple]:
    """What a text claims about a timeline with these sound names, clause by clause. Claims: ("time", owner,
    seconds, said of the recording, text), ("count", owner, n, text), ("total", n, text), ("first" | "last",
    name, text), ("order", earlier, later, text).

    The text is scanned once for numbers with units (shared with the facts check); counts, totals and order
    are looked for only around their key words (found with str.find, far cheaper than a regex scan). A claim
    belongs to the clause its position falls in, and is tied to the sounds named in that clause.
    """
    text = reading.text
    starts = _clause_starts(text)
    clause_spans = _clause_mentions(text, names, starts)
    mentions = {i: [(start, names[k]) for start, _, k in spans] for i, spans in clause_spans.items()}

    def tied(position: int) -> str | None:
        return _tied(position, mentions.get(bisect_right(starts, position) - 1, []))

    claims: list[tuple] = []
    # A time after "gap", "pause", ... is relative; most texts name none of them, which spares a search per time.
    relative_words = any(word in text for word in _RELATIVE_BEFORE_WORDS)
    for m in reading.measures:
        if m.raw_unit not in _SECONDS:
            continue
        if _RELATIVE_AFTER.match(text, m.end) or (
                relative_words and _RELATIVE_BEFORE.search(text, max(0, m.start - 40), m.start)):
            continue
        owner = tied(m.start)
        adjective = "-" in m.text and _ADJECTIVE.search(m.text) is not None
        for value in dict.fromkeys((m.low, m.high)):
            claims.append(("time", owner, value, adjective, m.text.strip()))
    for word in ("time", "once", "twice", "thrice"):
        for at in _occurrences(text, word):
            m = next((x for x in _TIMES.finditer(text, _back(text, at, 16), at + len(word) + 40) if
                      x.start() <= at < x.end()), None)
            if m is None:
                continue
            n = _count(m["n"]) if m["n"] else NUMBER_WORDS[m["w"]]
            if n is not None:
                claims.append(("count", tied(m.start()), n, m.group(0)))
    if "sound" in text or "event" in text:
        plain = text.replace('"', " ")
        seen: set[int] = set()
        for word in ("sounds", "events"):
            for at in _occurrences(plain, word):
                for m in _TOTAL.finditer(plain, _back(plain, at, 60), at + len(word) + 16):
                    if m.start() <= at < m.end() and m.start() not in seen:
                        seen.add(m.start())
                        n = _count(m["n"] or m["m"])
                        if n is not None:
                            claims.append(("total", n, m.group(0)))
    hinted: dict[int, set[str]] = {}  # clause -> the kinds of order claim its words hint at
    size = len(text)
    for kind, words in _ORDER_WORDS.items():
        for word in words:
            if word in text:
                for at in _occurrences(text, word):
                    after = at + len(word)
                    # Every order pattern needs its word to end a word ("last", not "lasts 0.5 s").
                    if after < size and (text[after].isalnum() or text[after] == "_"):
                        continue
                    hinted.setdefault(bisect_right(starts, at) - 1, set()).add(kind)
    for i in sorted(set(hinted) & set(clause_spans)):
        end = starts[i + 1] if i + 1 < len(starts) else len(text)
        claims += _order_claims(text[starts[i]:end], [(s - starts[i], e - starts[i], k) for s, e, k in clause_spans[i]],
                                names, hinted[i])
    return claims


_ORDER_WORDS = {"first": ("first", "earliest", "opening", "opens", "starts with", "begins with"),
                "last": ("last", "final", "latest", "closing", "ends with", "closes with", "finishes with"),
                "before": ("before", "after", "earlier", "later", "ahead", "precedes", "follows")}


def _occurrences(text: str, word: str) -> list[int]:
    """Where `word` occurs in `text` (str.find: no regex scan)."""
    found, at = [], text.find(word)
    while at >= 0:
        found.append(at)
        at = text.find(word, at + 1)
    return found


def _back(text: str, position: int, width: int) -> int:
    """A window start `width` characters before `position`, moved back to a word boundary."""
    start = max(0, position - width)
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    return start


def _clause_starts(text: str) -> list[int]:
    """Where each clause begins: after ; ! ? a line break, or a full stop that is not a decimal point."""
    cuts = [at + 1 for mark in ";!?\n" if mark in text for at in _occurrences(text, mark)]
    size, at = len(text), text.find(".")
    while at >= 0:
        if not (at + 1 < size and text[at + 1].isdigit()):
            cuts.append(at + 1)
        at = text.find(".", at + 1)
    return [0, *sorted(cuts)]


def _clause_mentions(text: str, names: tuple[str, ...], starts: list[int]) -> dict[int, list[tuple[int, int, int]]]:
    """Per clause index, (start, end, name index) of its mentions: quoted ones where the clause quotes any."""
    by_clause: dict[int, list[tuple[int, int, int]]] = {}
    for span in _mention_spans(text, names, quoted=True) if '"' in text else []:
        by_clause.setdefault(bisect_right(starts, span[0]) - 1, []).append(span)
    quoting = set(by_clause)
    for span in _mention_spans(text, names, quoted=False):
        i = bisect_right(starts, span[0]) - 1
        if i not in quoting:
            by_clause.setdefault(i, []).append(span)
    return by_clause


def _order_claims(clause: str, spans: list[tuple[int, int, int]], names: tuple[str, ...],
                  kinds: set[str]) -> list[tuple]:
    """The first/last and before/after claims (of the `kinds` its words hint at) of one clause."""
    tokenized = _tokenize(clause, spans)

    def name(token: str) -> str:
        return names[int("".join(str(ord(c) - 97) for c in _TOKEN.fullmatch(token)["k"]))]

    def said(m: re.Match[str]) -> str:
        return _TOKEN.sub(lambda t: name(t.group(0)), m.group(0))

    claims: list[tuple] = []
    for kind in (kind for kind in _ORDER_WORDS if kind in kinds):  # a fixed order, not the set's (hash-seeded)
        for m in (m for pattern in _ORDER_PATTERNS[kind] for m in pattern.finditer(tokenized)):
            if kind != "before":
                claims.append((kind, name(m["x"]), said(m)))
            elif m["x"] != m["y"]:
                x, y = name(m["x"]), name(m["y"])
                x_first = m["rel"] in ("before", "earlier than", "ahead of", "precedes")
                claims.append(("order", *((x, y) if x_first else (y, x)), said(m)))
    return claims


def _order_patterns() -> dict[str, list[re.Pattern[str]]]:
    """Order claims over a tokenized clause (each sound name a token), so they compile once."""
    cls = r"(?:a |an |the )?(?P<{}>\x01[a-z]+\x02)"
    x, y = cls.format("x"), cls.format("y")
    ordinal = {"first": ("first|earliest|opening", "opens|starts|begins"),
               "last": ("last|final|latest|closing", "ends|closes|finishes")}
    patterns = {kind: [re.compile(rf"\b(?:{words})\s+(?:sound|event|one)\b.*?\b(?:is|was)\s+{x}"),
                       re.compile(rf"{x}{_ORDER_VERB}{kind}\b"),
                       re.compile(rf"\b(?:{verbs})\s+with\s+{x}")]
                for kind, (words, verbs) in ordinal.items()}
    patterns["before"] = [re.compile(
        rf"{x}{_ORDER_VERB}(?:right\s+|just\s+|immediately\s+|directly\s+|well\s+)?"
        rf"(?P<rel>before|after|earlier than|later than|ahead of|precedes|follows)\s+{y}")]
    return patterns


_ORDER_PATTERNS = _order_patterns()
