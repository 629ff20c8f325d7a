"""Words for measured acoustic facts and for a scene's timeline, shared by the `facts` captions and the
template teacher."""

from __future__ import annotations


def display_label(label: str) -> str:
    """How a class name reads in text: 'hihat_open' -> 'hihat open'."""
    return " ".join(label.replace("_", " ").split())


def format_seconds(value: float) -> str:
    if value < 10:
        return f"{value:.2f} seconds"
    return f"{value:.1f} seconds"


def fact_phrases(facts: dict) -> dict[str, str]:
    """Phrases describing one clip's facts; every value comes from its own measurements."""
    duration = facts["duration_s"]
    loudness = facts["loudness_dbfs"]
    centroid = facts["spectral_centroid_hz"]
    f0 = facts.get("f0_median_hz")
    onsets = facts["onset_count"]
    silence = facts["silence_ratio"]
    duration_word = ("very short" if duration < 0.6 else "short" if duration < 3 else
                     "medium-length" if duration < 15 else "long")
    loudness_word = ("very quiet" if loudness < -40 else "quiet" if loudness < -30 else
                     "moderate" if loudness < -18 else "loud")
    brightness_word = ("dark, bass-heavy" if centroid < 300 else "warm, low-mid" if centroid < 900 else
                       "balanced" if centroid < 2500 else "bright, treble-rich")
    if f0:
        register = "low" if f0 < 150 else "mid-range" if f0 < 260 else "high"
        pitch_phrase = f"a {register} pitch centred near {f0:.0f} Hz"
    else:
        pitch_phrase = "no stable pitch, so it is noisy or percussive rather than tonal"
    if silence > 0.5:
        texture_phrase = f"mostly decaying or silent ({silence:.0%} of it is near silence)"
    elif silence > 0.1:
        texture_phrase = f"broken by quiet stretches ({silence:.0%} near silence)"
    else:
        texture_phrase = "continuous, with almost no silence"
    if onsets <= 1:
        onsets_phrase = "a single attack" if onsets == 1 else "a smooth onset without a sharp attack"
    else:
        onsets_phrase = f"{onsets} distinct onsets"
    if facts.get("tempo_bpm"):
        onsets_phrase += f" at roughly {facts['tempo_bpm']:.0f} beats per minute"
    if facts.get("clipping_ratio", 0) > 0.001:
        texture_phrase += ", with some clipping"
    return {
        "duration": format_seconds(duration),
        "duration_cap": format_seconds(duration).capitalize(),
        "duration_adj": f"{duration:.2f}-second" if duration < 10 else f"{duration:.1f}-second",
        "duration_word": duration_word,
        "loudness": f"{loudness:.1f} dBFS",
        "loudness_word": loudness_word,
        "peak": f"{facts['peak_dbfs']:.1f} dBFS",
        "centroid": f"{centroid:.0f} Hz",
        "brightness_word": brightness_word,
        "pitch_phrase": pitch_phrase,
        "texture_phrase": texture_phrase,
        "onsets_phrase": onsets_phrase,
    }


def format_time_s(seconds: float) -> str:
    """A time in a timeline as prose gives it: one decimal ('1.2')."""
    return f"{seconds:.1f}"


def event_length_word(duration_s: float) -> str:
    return ("very brief" if duration_s < 0.3 else "short" if duration_s < 0.8 else
            "medium-length" if duration_s < 2.0 else "long" if duration_s < 5.0 else "sustained")


def event_loudness_word(level_dbfs: float, loudest_dbfs: float) -> str:
    """How loud one sound of a scene is, next to the loudest sound of that scene."""
    below = loudest_dbfs - level_dbfs
    return "loud" if below < 3 else "softer" if below < 10 else "quiet"


def timeline_phrase(events: list, duration_s: float) -> str:
    """A scene's sounds in order of onset with their approximate times, as one sentence (no final stop).

    `events` are `cotaforge.scenes.Event`s; a sound that starts while an earlier one still sounds is said
    to come in over it.
    """
    ordered = sorted(events, key=lambda e: (e.onset_s, e.offset_s))
    parts = []
    for i, e in enumerate(ordered):
        span = f'"{e.class_label}" from about {format_time_s(e.onset_s)} s to {format_time_s(e.offset_s)} s'
        if i == 0:
            parts.append(span)
        elif any(earlier.offset_s > e.onset_s for earlier in ordered[:i]):
            parts.append(f"over it {span}")
        else:
            parts.append(f"then {span}")
    count = f"{len(ordered)} sound" + ("" if len(ordered) == 1 else "s")
    length = f"{duration_s:.2f}-second" if duration_s < 10 else f"{duration_s:.1f}-second"
    return f"A {length} recording of {count}: " + ", ".join(parts)
