"""Reading numbers, counts and order back out of chain-of-thought text."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cotaforge.claims import ClipClaims, fact_contradictions, fact_references, measures, read, timeline_contradictions
from cotaforge.scenes import Event

REFERENCES = {"s": [1.62, 0.0], "hz": [1534.0, 183.0], "dbfs": [-23.4, -3.1], "onsets": [3.0]}


@pytest.mark.parametrize("text,unit,low,high", [
    ("It lasts 1.62 seconds.", "s", 1.62, 1.62),
    ("a 1.62-second clip", "s", 1.62, 1.62),
    ("It runs for 1620 ms.", "s", 1.62, 1.62),
    ("energy near 1.5 kHz", "hz", 1500.0, 1500.0),
    ("between 200 and 400 Hz", "hz", 200.0, 400.0),
    ("from 0.3 to 0.8 s", "s", 0.3, 0.8),
    ("0.3-0.8 s", "s", 0.3, 0.8),
    ("at \u221223.4 dBFS", "dbfs", -23.4, -23.4),
    ("at minus 23 dB FS", "dbfs", -23.0, -23.0),
    ("3 distinct onsets", "onsets", 3.0, 3.0),
    ("three sharp attacks", "onsets", 3.0, 3.0),
])
def test_quantities_and_their_units(text, unit, low, high):
    found = measures(text)
    assert [(m.unit, round(m.low, 6), round(m.high, 6)) for m in found] == [(unit, low, high)]


@pytest.mark.parametrize("text", ["It has 3 sounds.", "1.5 times as long", "6 dB louder", "option B (2.4)",
                                  "the second sound", "45% near silence"])
def test_numbers_without_a_measured_unit_are_not_quantities(text):
    assert measures(text) == []


@pytest.mark.parametrize("text,ok", [
    ("It lasts 1.62 seconds.", True),
    ("It lasts 1.7 seconds.", True),  # within 0.1 s + 10 %
    ("It lasts 2.5 seconds.", False),
    ("It lasts about 2 seconds.", True),  # hedged: "2" may be a rounded 1.62
    ("It lasts 2 seconds.", False),  # the same number said as exact is not
    ("Its centroid is near 1534 Hz.", True),
    ("Its energy is around 1.5 kHz.", True),
    ("Its energy is around 3.5 kHz.", False),
    ("Most energy lies between 1000 and 2000 Hz.", True),
    ("Most energy lies between 3000 and 4000 Hz.", False),
    ("The level is -23 dBFS.", True),
    ("The level is -35 dBFS.", False),
    ("I count 3 distinct onsets.", True),
    ("I count 5 distinct onsets.", False),
    ("I count about 4 distinct onsets.", True),
])
def test_fact_tolerances(text, ok):
    assert (fact_contradictions(text, REFERENCES) == []) == ok, text


def ev(cls: str, onset_s: float, offset_s: float) -> Event:
    return Event(cls, f"{cls}.wav", "", cls, onset_s, offset_s, 0.0, -20.0)


TIMELINE = [ev("one", 0.3, 0.8), ev("dog bark", 1.5, 2.0), ev("one", 3.0, 3.4)]


@pytest.mark.parametrize("text,ok", [
    ('First, around 0.3 s, "one"; then, from about 1.5 s, "dog bark"; the next one, "one", at 3.0 s.', True),
    ('First, around 0.3 s, "one"; then, from about 3.0 s, "dog bark".', False),  # the bark is at 1.5 s
    ("The dog bark starts around 1.6 s and lasts 0.5 s.", True),
    ("The dog bark starts around 2.9 s.", False),
    ("After a gap of 0.7 s the dog bark comes in.", True),  # a gap is not a time in the timeline
    ("The bark comes 0.7 s later.", True),
    ('"one" is heard 2 times.', True),
    ('"one" is heard 3 times.', False),
    ("The word one is heard twice.", True),
    ("I hear 3 separate sounds.", True),
    ("I hear 4 separate sounds.", False),
    ("The dog bark is twice as long as the first sound.", True),  # a ratio, not a count
    ('The first sound is "one".', True),
    ('The first sound is "dog bark".', False),
    ("The dog bark comes last.", False),
    ("The dog bark is heard after one.", True),
    ("The dog bark is heard before one.", True),  # true of the second "one"
    ("The dog bark comes before the one at 0.3 s.", True),
    ('A 3.40-second recording with "dog bark".', True),  # said of the recording's length
])
def test_timeline_claims(text, ok):
    assert (timeline_contradictions(text, TIMELINE, 3.4) == []) == ok, text


def test_a_time_is_tied_to_the_sound_named_nearest_before_it():
    assert timeline_contradictions('"one" starts at 3.0 s and "dog bark" at 1.5 s.', TIMELINE, 3.4) == []
    problems = timeline_contradictions('"dog bark" starts at 3.0 s and "one" at 1.5 s.', TIMELINE, 3.4)
    assert len(problems) == 2 and all("matches no start" in p for p in problems)


def test_a_sound_asked_about_but_absent_can_be_said_to_occur_zero_times():
    assert timeline_contradictions('"crash" is heard 0 times.', TIMELINE, 3.4, asked=["crash"]) == []
    assert timeline_contradictions('"crash" is heard 1 time.', TIMELINE, 3.4, asked=["crash"]) != []


@pytest.mark.parametrize("text", [
    "Description: a clip of 1.62 seconds, at -23.4 dBFS; it peaks at -3.1 dBFS: energy near 1.5 kHz.",
    "Most energy lies between 200 and 400 Hz, from 0.3 to 0.8 s; 3 distinct onsets, about, 2 s.",
    "It lasts about 2 seconds! Really? Around 1.5 kHz, roughly 4 attacks.",
])
def test_a_text_read_piece_by_piece_gives_the_quantities_read_whole(text):
    def said(found):
        return sorted((m.unit, m.low, m.high, m.slack, m.text) for m in found)

    assert said(read(text).measures) and said(measures(text)) == said(read(text).measures)


def test_a_hedge_must_stand_right_before_its_number():
    assert [m.slack for m in measures("lasts about 2 s, about, 2 s, some 2 s, awesome 2 s, ~2 s")] == \
        [0.5, 0.0, 0.5, 0.0, 0.5]


FACTS = {"duration_s": 1.62, "spectral_centroid_hz": 1534.0, "f0_median_hz": 183.0, "loudness_dbfs": -23.4,
         "peak_dbfs": -3.1, "onset_count": 3}


def test_clip_claims_reuses_no_verdict_that_a_sample_s_own_references_changed():
    checker = ClipClaims(FACTS)
    comparison = {"fact": "duration_s", "reference_value": 4.0}
    said = "It lasts 1.62 seconds; the reference lasts 4.0 seconds."
    # The 4.0 s stands only on this sample's comparison: fine here, a contradiction for a sample without it.
    assert checker.fact_contradictions([said], comparison) == []
    assert checker.fact_contradictions([said]) == fact_contradictions(said, fact_references(FACTS)) != []
    assert checker.fact_contradictions([said], comparison) == []
    assert checker.fact_contradictions(["It lasts 0.4 seconds", "onset at 0.4 s."], None, [0.4]) == []
    assert checker.fact_contradictions(["It lasts 0.4 seconds."]) != []


def test_clip_claims_agrees_with_the_one_off_checks_on_a_scene():
    facts = {**FACTS, "duration_s": 3.4}
    checker = ClipClaims(facts, TIMELINE)
    texts = ['First, around 0.3 s, "one"; then, from about 3.0 s, "dog bark".', '"crash" is heard 1 time.',
             '"one" is heard 2 times, at -20 dBFS.', "The dog bark starts around 1.6 s and lasts 9 s.",
             '"crash" is heard 0 times.', 'The first sound is "dog bark".'] * 2
    for text in texts:
        for asked, options in (([], []), (["crash"], []), (["one"], [2.2])):
            reading = read(text)
            assert checker.fact_contradictions(reading, None, options) == fact_contradictions(
                reading, fact_references(facts, None, TIMELINE, options)), text
            assert checker.timeline_contradictions(reading, asked, options) == timeline_contradictions(
                reading, TIMELINE, 3.4, asked, options), text
    assert ClipClaims(FACTS).timeline_contradictions(read('"one" is heard 5 times.')) == []  # no timeline: nothing


def test_the_order_of_contradictions_does_not_depend_on_the_hash_seed():
    # One clause with a "first" and a "last" claim: both wrong, reported in the same order in every process.
    script = ("from cotaforge.claims import timeline_contradictions\n"
              "from cotaforge.scenes import Event\n"
              "events = [Event(c, c + '.wav', '', c, a, b, 0.0, -20.0) for c, a, b in "
              "(('one', 0.3, 0.8), ('dog bark', 1.5, 2.0))]\n"
              "print(timeline_contradictions('The first sound is \"dog bark\" and \"one\" comes last.', events, 2.0))")
    outputs = {subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONHASHSEED": str(seed)},
                              capture_output=True, text=True, check=True).stdout for seed in range(4)}
    assert len(outputs) == 1 and "the first sound" in outputs.pop()
