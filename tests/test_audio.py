
import numpy as np
import pytest
import soundfile as sf

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
