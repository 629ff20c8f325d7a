"""Words for measured acoustic facts, shared by the `facts` captions and the template teacher."""

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
