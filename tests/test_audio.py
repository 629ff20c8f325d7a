
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cotaforge import audio
from cotaforge.audio import AudioDecodeError, acoustic_facts, content_hash, decode_audio, read_wav_bytes, to_pcm16, wav_bytes

SR = 16000


def tone(freq: float, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    """A steady tone with a 20 ms fade-out, so its end does not click."""
    y = amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * SR)) / SR)
    y[-320:] *= np.linspace(1, 0, 320)
    return y.astype(np.float32)


def clicks(bpm: float, seconds: float) -> np.ndarray:
    y = np.zeros(int(seconds * SR), np.float32)
    rng = np.random.default_rng(0)
    for start in np.arange(0, seconds, 60 / bpm):
        i = int(start * SR)
        y[i:i + 400] = rng.normal(0, 0.3, len(y[i:i + 400])) * np.exp(-np.arange(len(y[i:i + 400])) / 80)
    return y


def test_level_duration_and_pitch_of_a_tone():
    facts = acoustic_facts(tone(220, 2.0, 0.5))
    assert facts.duration_s == pytest.approx(2.0)
    assert facts.loudness_dbfs == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.1)
    assert facts.peak_dbfs == pytest.approx(20 * np.log10(0.5), abs=0.05)
    assert facts.f0_median_hz == pytest.approx(220, rel=0.01)
    assert facts.silence_ratio == 0 and facts.clipping_ratio == 0
    assert facts.spectral_centroid_hz == pytest.approx(220, rel=0.05)
    assert facts.onset_count == 1  # the tone starts at once, then stays steady


@pytest.mark.parametrize("freq", [90.0, 150.0, 330.0, 470.0])
def test_pitch_across_the_voice_range(freq):
    assert acoustic_facts(tone(freq, 1.0)).f0_median_hz == pytest.approx(freq, rel=0.02)


def test_noise_has_no_pitch_and_a_high_centroid():
    noise = np.random.default_rng(1).normal(0, 0.1, SR).astype(np.float32)
    facts = acoustic_facts(noise)
    assert facts.f0_median_hz is None
    assert facts.spectral_centroid_hz > 3000


def test_onsets_and_tempo_of_a_click_track():
    facts = acoustic_facts(clicks(120, 8.0))
    assert facts.onset_count == 16
    assert facts.tempo_bpm == pytest.approx(120, rel=0.03)
    assert facts.silence_ratio > 0.5


def test_short_clip_has_no_tempo():
    assert acoustic_facts(clicks(120, 1.0)).tempo_bpm is None


def test_decode_downmixes_and_resamples(tmp_path):
    stereo = np.stack([tone(300, 1.0, 0.2), tone(300, 1.0, 0.6)], axis=1)
    path = tmp_path / "s.flac"
    sf.write(path, np.repeat(stereo, 3, axis=0)[: 48000], 48000)
    decoded = decode_audio(path)
    assert decoded.original_channels == 2 and decoded.original_sample_rate_hz == 48000
    assert len(decoded.samples) == 16000 and decoded.samples.dtype == np.float32


def test_clipping_is_measured_before_resampling(tmp_path):
    path = tmp_path / "c.wav"
    sf.write(path, np.clip(tone(200, 1.0, 2.0), -1, 1), 44100, subtype="PCM_16")
    assert decode_audio(path).clipping_ratio > 0.3


def test_decode_errors_have_reason_codes(tmp_path):
    with pytest.raises(AudioDecodeError) as missing:
        decode_audio(tmp_path / "nope.wav")
    assert missing.value.reason == "file_missing"
    (tmp_path / "x.wav").write_bytes(b"RIFF----WAVEjunk")
    with pytest.raises(AudioDecodeError) as junk:
        decode_audio(tmp_path / "x.wav")
    assert junk.value.reason == "decode_failed"


def test_wav_round_trip_and_content_hash_ignores_container(tmp_path):
    pcm = to_pcm16(tone(250, 0.5))
    assert np.allclose(read_wav_bytes(wav_bytes(pcm)), pcm / 32768, atol=1e-4)
    sf.write(tmp_path / "a.wav", pcm, SR, subtype="PCM_16")
    sf.write(tmp_path / "a.flac", pcm, SR, subtype="PCM_16")
    ids = {content_hash(to_pcm16(decode_audio(tmp_path / name).samples)) for name in ("a.wav", "a.flac")}
    assert len(ids) == 1


# -- the facts of real clips, against reference measurements ---------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
REFERENCE_CLIPS = ["digits/audio/0_george_0.wav", "digits/audio/3_lucas_1.wav", "digits/audio/5_yweweler_4.wav",
                   "digits/audio/7_nicolas_2.wav", "drums/audio/clap_blackpearl_01.wav",
                   "drums/audio/kick_forzee_01.wav", "drums/audio/ride_blackpearl_01.wav",
                   "drums/audio/snare_forzee_02.wav"]
# Measured by the plain whole-clip implementation (every frame of the padded clip transformed at once, one
# inverse FFT for all active frames); the block-wise one that skips digital silence must reproduce them.
FACT_FIELDS = ("duration_s", "loudness_dbfs", "peak_dbfs", "clipping_ratio", "silence_ratio",
               "spectral_centroid_hz", "onset_count", "tempo_bpm", "f0_median_hz", "voiced_ratio")
REFERENCE_FACTS = {name: dict(zip(FACT_FIELDS, values)) for name, values in {
    "digits/audio/0_george_0.wav": (0.298, -21.03, -10.01, 0.0, 0.0, 704.4, 1, None, 158.9, 0.9474),
    "digits/audio/3_lucas_1.wav": (0.6079, -26.21, -8.88, 0.0, 0.25, 505.5, 1, None, 115.5, 0.3947),
    "digits/audio/5_yweweler_4.wav": (0.501, -35.62, -15.45, 0.0, 0.25, 801.8, 1, None, 108.8, 0.25),
    "digits/audio/7_nicolas_2.wav": (0.4461, -24.81, -10.04, 0.0, 0.0, 495.9, 1, None, 137.8, 0.6786),
    "drums/audio/clap_blackpearl_01.wav": (0.6298, -30.5, -5.57, 0.0, 0.68, 1526.9, 1, None, None, 0.0),
    "drums/audio/kick_forzee_01.wav": (2.0, -28.65, -1.46, 0.0, 0.6125, 113.4, 1, None, None, 0.0),
    "drums/audio/ride_blackpearl_01.wav": (1.4993, -38.0, -12.12, 0.0, 0.0339, 3578.5, 1, None, None, 0.0),
    "drums/audio/snare_forzee_02.wav": (2.0, -32.31, -4.72, 0.0, 0.85, 479.5, 1, None, None, 0.0),
    "scene": (11.5821, -35.28, -10.01, 0.0, 0.7754, 646.6, 9, 62.5, 129.0, 0.0773),
    "mixture": (1.1079, -26.93, -7.4, 0.0, 0.4773, 369.8, 1, None, 116.2, 0.2),
    "empty": (0.0, -200.0, -200.0, 0.0, 1.0, 0.0, 0, None, None, 0.0),
    "digital_silence": (1.0, -200.0, -200.0, 0.0, 1.0, 0.0, 0, None, None, 0.0),
}.items()}
# Float noise may move a value by one unit of its last published digit; anything more is a changed measure.
FACT_TOLERANCE = {"duration_s": 0.0, "clipping_ratio": 0.0, "loudness_dbfs": 0.01, "peak_dbfs": 0.01,
                  "silence_ratio": 0.0001, "spectral_centroid_hz": 0.1, "tempo_bpm": 0.1, "f0_median_hz": 0.1,
                  "voiced_ratio": 0.0001, "onset_count": 0}


def _example(rel: str):
    return decode_audio(EXAMPLES / rel)


def _reference_signal(name: str) -> tuple[np.ndarray, float]:
    """(samples, clipping ratio) of a reference clip: an example file, or one built from them."""
    if name in REFERENCE_CLIPS:
        decoded = _example(name)
        return decoded.samples, decoded.clipping_ratio
    if name == "scene":  # the eight clips at falling levels, 0.4 s of digital silence between them
        gap = np.zeros(6400, np.float32)
        parts = [gap]
        for i, rel in enumerate(REFERENCE_CLIPS):
            parts += [_example(rel).samples * np.float32(10 ** (-3 * i / 20)), gap]
        return to_pcm16(np.concatenate(parts)).astype(np.float32) / 32768.0, 0.0
    if name == "mixture":  # a kick over a spoken digit
        kick, digit = _example(REFERENCE_CLIPS[5]).samples, _example(REFERENCE_CLIPS[1]).samples
        mix = np.zeros(len(digit) + 8000, np.float32)
        mix[:len(digit)] += digit
        mix[4000:4000 + len(kick)] += 0.5 * kick[:len(mix) - 4000]
        return mix, 0.0
    return np.zeros(0 if name == "empty" else SR, np.float32), 0.0


def assert_facts_match(measured: dict, expected: dict) -> None:
    assert measured.keys() == expected.keys()
    for key, want in expected.items():
        got = measured[key]
        if want is None or got is None:
            assert got == want, f"{key}: {got} != {want}"
        else:
            assert abs(got - want) <= FACT_TOLERANCE[key] + 1e-9, f"{key}: {got} != {want}"


@pytest.mark.parametrize("name", list(REFERENCE_FACTS))
def test_facts_match_the_reference_measurements(name):
    samples, clipping_ratio = _reference_signal(name)
    assert_facts_match(acoustic_facts(samples, clipping_ratio).model_dump(), REFERENCE_FACTS[name])


def test_block_size_and_skipped_silence_do_not_change_the_measures(monkeypatch):
    """Tiny blocks, tiny pitch batches and no skipping of silent frames give the same per-frame measures."""
    samples, _ = _reference_signal("scene")
    frame_count = 1 + len(samples) // audio.HOP
    default = audio._stft_measures(samples)
    blocks = audio._stft_blocks(samples, frame_count)
    skipped = frame_count - sum(end - first for first, end in blocks)
    assert skipped > frame_count // 5  # the gaps between the clips are not transformed
    monkeypatch.setattr(audio, "BLOCK_FRAMES", 5)
    monkeypatch.setattr(audio, "PITCH_ROWS", 3)
    monkeypatch.setattr(audio, "SILENT_RUN_FRAMES", 10**9)
    blocks = audio._stft_blocks(samples, frame_count)
    # Now every frame from the first sounding one to the last is transformed, the gaps' zeros included.
    assert all(end - first <= 5 for first, end in blocks)
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    assert sum(end - first for first, end in blocks) > frame_count - 60
    small = audio._stft_measures(samples)
    for field in ("energy", "freq_weighted", "log_mel"):
        np.testing.assert_allclose(getattr(small, field), getattr(default, field), rtol=1e-5, atol=1e-9)
    voiced = default.pitch_strength > audio.VOICING_THRESHOLD
    assert voiced.sum() > 10
    np.testing.assert_array_equal(small.pitch_strength > audio.VOICING_THRESHOLD, voiced)
    np.testing.assert_allclose(small.pitch_lag[voiced], default.pitch_lag[voiced], rtol=1e-5)
    assert_facts_match(acoustic_facts(samples).model_dump(), REFERENCE_FACTS["scene"])


def test_facts_from_several_threads_agree():
    """Each thread has its own work buffers, so concurrent measurements do not mix."""
    names = ["scene", "mixture", *REFERENCE_CLIPS]
    signals = [_reference_signal(name) for name in names]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda s: acoustic_facts(*s).model_dump(), signals * 3))
    for i, result in enumerate(results):
        assert_facts_match(result, REFERENCE_FACTS[names[i % len(names)]])
