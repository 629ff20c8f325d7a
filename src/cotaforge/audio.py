"""Decode, downmix and resample audio to 16 kHz mono, and measure the acoustic facts that ground captions.

All facts come from one short-time Fourier transform of the 16 kHz signal (frame 1024, hop 256): the
spectral centroid, the onset envelope (spectral flux of a 40-band mel spectrum), tempo (autocorrelation of
that envelope) and pitch (each frame's autocorrelation is the inverse FFT of its power spectrum), so a
10-second clip costs a few milliseconds of CPU.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import scipy.fft
import soxr
from scipy.ndimage import maximum_filter1d, uniform_filter1d

from cotaforge.models import SAMPLE_RATE_HZ, AcousticFacts

N_FFT = 1024
HOP = 256
N_MELS = 40
F0_MIN_HZ = 60.0
F0_MAX_HZ = 500.0
VOICING_THRESHOLD = 0.6
SILENCE_FRAME_DBFS = -60.0
CLIP_LEVEL = 0.999
ONSET_MIN_FLUX = 0.05
MIN_VOICED_SHARE = 0.2  # of active frames, before a pitch is reported
_EPS = 1e-10


class AudioDecodeError(ValueError):
    """The file is not audio this tool can read; `reason` is the reject reason code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # float32 mono at SAMPLE_RATE_HZ
    original_sample_rate_hz: int
    original_channels: int
    clipping_ratio: float  # measured before resampling, where clipping actually happened


def decode_audio(path: Path) -> DecodedAudio:
    """Read WAV/FLAC/OGG/MP3 (anything libsndfile reads), downmix to mono and resample to 16 kHz.

    Raises AudioDecodeError with reason file_missing, file_empty, decode_failed or file_truncated.
    """
    if not path.is_file():
        raise AudioDecodeError("file_missing", f"{path} does not exist; fix the manifest's path or add the file")
    if path.stat().st_size == 0:
        raise AudioDecodeError("file_empty", f"{path} is empty (0 bytes); replace it with the real recording")
    try:
        with sf.SoundFile(path) as handle:
            declared_frames = handle.frames
            sample_rate = handle.samplerate
            channels = handle.channels
            # Integer PCM is read as integers and scaled here: libsndfile's own conversion to float is
            # the slowest step of decoding.
            read_as, full_scale = _INTEGER_READS.get(handle.subtype, ("float32", 1.0))
            data = handle.read(dtype=read_as, always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioDecodeError("decode_failed", f"{path} could not be decoded as audio ({exc}); "
                                                "check it is a WAV, FLAC, OGG or MP3 file") from exc
    declared_bytes, available_bytes = _wav_data_sizes(path)
    if declared_bytes > available_bytes or (declared_frames > 0 and len(data) < declared_frames):
        raise AudioDecodeError("file_truncated", f"{path} is truncated: its header declares more audio than the "
                                                 "file holds; re-export or re-download it")
    if len(data) == 0:
        raise AudioDecodeError("file_empty", f"{path} holds no audio frames; replace it with the real recording")
    mono = _downmix(data, full_scale)
    if not np.all(np.isfinite(mono)):
        raise AudioDecodeError("decode_failed", f"{path} decodes to NaN or infinite samples; re-export it")
    clipping_ratio = float(np.count_nonzero(np.abs(mono) >= CLIP_LEVEL)) / len(mono)
    if sample_rate != SAMPLE_RATE_HZ:
        mono = soxr.resample(mono, sample_rate, SAMPLE_RATE_HZ, quality="HQ").astype(np.float32, copy=False)
    return DecodedAudio(np.ascontiguousarray(mono, dtype=np.float32), sample_rate, channels, clipping_ratio)


_INTEGER_READS = {"PCM_S8": ("int16", 32768.0), "PCM_U8": ("int16", 32768.0), "PCM_16": ("int16", 32768.0),
                  "PCM_24": ("int32", 2.0**31), "PCM_32": ("int32", 2.0**31)}


def _downmix(data: np.ndarray, full_scale: float) -> np.ndarray:
    """Average of the channels as float32 in [-1, 1]. Column sums are many times faster than `mean(axis=1)`."""
    mono = data[:, 0].astype(np.float32)
    for channel in range(1, data.shape[1]):
        mono += data[:, channel]
    mono *= np.float32(1.0 / (data.shape[1] * full_scale))
    return mono


def _wav_data_sizes(path: Path) -> tuple[int, int]:
    """(bytes the RIFF 'data' chunk declares, bytes actually there); (0, 0) for other formats.

    libsndfile quietly shortens a cut-off WAV to what is left, so the header is checked here.
    """
    with path.open("rb") as handle:
        header = handle.read(12)
        if len(header) < 12 or header[:4] not in (b"RIFF", b"RF64") or header[8:12] != b"WAVE":
            return 0, 0
        size = path.stat().st_size
        while True:
            chunk = handle.read(8)
            if len(chunk) < 8:
                return 0, 0
            chunk_id, chunk_size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if chunk_id == b"data":
                # Streaming writers leave 0 or 0xFFFFFFFF when the length was unknown: nothing to check.
                if chunk_size in (0, 0xFFFFFFFF) or header[:4] == b"RF64":
                    return 0, 0
                return chunk_size, size - handle.tell()
            handle.seek(chunk_size + (chunk_size & 1), 1)


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2")


def content_hash(pcm16: np.ndarray) -> str:
    """The clip id: the same sound gives the same id whatever file format or name it came in."""
    return hashlib.sha256(pcm16.tobytes()).hexdigest()[:16]


def wav_bytes(pcm16: np.ndarray, sample_rate_hz: int = SAMPLE_RATE_HZ) -> bytes:
    """A complete 16-bit PCM WAV file in memory (what the published `audio.bytes` holds)."""
    buffer = io.BytesIO()
    sf.write(buffer, pcm16, sample_rate_hz, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def read_wav_bytes(data: bytes) -> np.ndarray:
    samples, _ = sf.read(io.BytesIO(data), dtype="float32")
    return samples


_MEL_CACHE: dict[int, np.ndarray] = {}


def _mel_matrix() -> np.ndarray:
    if SAMPLE_RATE_HZ not in _MEL_CACHE:
        import librosa  # imported lazily: librosa's import is slow and only this filterbank is needed

        _MEL_CACHE[SAMPLE_RATE_HZ] = librosa.filters.mel(
            sr=SAMPLE_RATE_HZ, n_fft=N_FFT, n_mels=N_MELS, fmin=30.0, fmax=8000.0
        ).astype(np.float32)
    return _MEL_CACHE[SAMPLE_RATE_HZ]


_WINDOW = np.hanning(N_FFT + 1)[:-1].astype(np.float32)
# Autocorrelation of the window itself, to undo the taper's bias towards short lags in pitch detection.
_WINDOW_AC = np.fft.irfft(np.abs(np.fft.rfft(_WINDOW, 2 * N_FFT)) ** 2)[:N_FFT]
_WINDOW_AC = (_WINDOW_AC / _WINDOW_AC[0]).astype(np.float32)


def _frames(samples: np.ndarray) -> np.ndarray:
    # Centred frames (half a frame of silence each side): a hit at the very start is not lost to the taper.
    samples = np.pad(samples, (N_FFT // 2, N_FFT // 2))
    if len(samples) < N_FFT:
        samples = np.pad(samples, (0, N_FFT - len(samples)))
    count = 1 + (len(samples) - N_FFT) // HOP
    return np.lib.stride_tricks.as_strided(
        samples, shape=(count, N_FFT), strides=(samples.strides[0] * HOP, samples.strides[0]), writeable=False
    )


def _dbfs(value: float) -> float:
    return float(20.0 * np.log10(max(value, _EPS)))


def acoustic_facts(samples: np.ndarray, clipping_ratio: float = 0.0) -> AcousticFacts:
    """Measure duration, level, clipping, silence, brightness, onsets, tempo and pitch of a 16 kHz clip."""
    sr = SAMPLE_RATE_HZ
    duration_s = len(samples) / sr
    peak = float(np.max(np.abs(samples))) if len(samples) else 0.0
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if len(samples) else 0.0

    # Silence on 25 ms frames (400 samples), independent of the STFT framing.
    frame_len = 400
    usable = len(samples) // frame_len * frame_len
    if usable:
        frame_rms = np.sqrt(np.mean(np.square(samples[:usable].reshape(-1, frame_len)), axis=1))
        silence_ratio = float(np.mean(frame_rms < 10 ** (SILENCE_FRAME_DBFS / 20)))
    else:
        silence_ratio = 1.0 if rms < 10 ** (SILENCE_FRAME_DBFS / 20) else 0.0

    frames = _frames(samples) * _WINDOW
    # scipy's FFT keeps float32 and is several times faster here than numpy's.
    spectrum = scipy.fft.rfft(frames, n=N_FFT, axis=1, workers=1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    frame_energy = power.sum(axis=1)
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / sr).astype(np.float32)
    loud = frame_energy > frame_energy.max() * 1e-4 if frame_energy.size else frame_energy.astype(bool)
    if loud.any():
        centroids = (power[loud] @ freqs) / (frame_energy[loud] + _EPS)
        centroid_hz = float(np.average(centroids, weights=frame_energy[loud]))
    else:
        centroid_hz = 0.0

    # Onsets: positive spectral flux of the log-mel spectrum, peaks above a local adaptive threshold.
    log_mel = np.log1p(10.0 * (power @ _mel_matrix().T))
    # Silence is assumed before the clip, so a hit at the very start counts as an onset.
    flux = np.maximum(np.diff(log_mel, axis=0, prepend=np.zeros_like(log_mel[:1])), 0.0).mean(axis=1)
    onset_count = 0
    tempo_bpm: float | None = None
    # A steady tone has almost no flux; the absolute floor keeps its numerical noise from counting.
    if flux.size >= 3 and flux.max() > ONSET_MIN_FLUX:
        envelope = flux / flux.max()
        local_max = maximum_filter1d(envelope, size=7, mode="constant")  # peaks at least ~50 ms apart
        threshold = uniform_filter1d(envelope, size=31, mode="nearest") + 0.1
        peaks = (envelope == local_max) & (envelope > threshold) & (flux > max(0.2 * flux.max(), ONSET_MIN_FLUX))
        onset_count = int(np.count_nonzero(peaks))
        tempo_bpm = _tempo_bpm(envelope, duration_s, onset_count)

    f0_median_hz, voiced_ratio = _pitch(power, frame_energy)
    return AcousticFacts(
        duration_s=round(duration_s, 4),
        loudness_dbfs=round(_dbfs(rms), 2),
        peak_dbfs=round(_dbfs(peak), 2),
        clipping_ratio=round(clipping_ratio, 5),
        silence_ratio=round(silence_ratio, 4),
        spectral_centroid_hz=round(centroid_hz, 1),
        onset_count=onset_count,
        tempo_bpm=tempo_bpm,
        f0_median_hz=f0_median_hz,
        voiced_ratio=round(voiced_ratio, 4),
    )


def _tempo_bpm(envelope: np.ndarray, duration_s: float, onset_count: int) -> float | None:
    """Dominant periodicity of the onset envelope between 40 and 240 BPM, for clips long enough to have one."""
    if duration_s < 3.0 or onset_count < 4:
        return None
    frame_rate = SAMPLE_RATE_HZ / HOP
    centered = envelope - envelope.mean()
    n = len(centered)
    ac = np.fft.irfft(np.abs(np.fft.rfft(centered, 2 * n)) ** 2)[:n]
    lag_min = int(frame_rate * 60 / 240)
    lag_max = min(int(frame_rate * 60 / 40), n - 1)
    if lag_max <= lag_min or ac[0] <= 0:
        return None
    lags = np.arange(lag_min, lag_max + 1)
    # A mild preference for ~120 BPM resolves octave ambiguity, as most beat trackers do.
    weights = np.exp(-0.5 * (np.log2((frame_rate * 60 / lags) / 120.0)) ** 2)
    best = lags[np.argmax(ac[lag_min:lag_max + 1] * weights)]
    if ac[best] / ac[0] < 0.1:
        return None
    return round(float(frame_rate * 60 / best), 1)


def _pitch(power: np.ndarray, frame_energy: np.ndarray) -> tuple[float | None, float]:
    """Median f0 of voiced frames from normalised autocorrelation (inverse FFT of each power spectrum)."""
    sr = SAMPLE_RATE_HZ
    active = frame_energy > max(frame_energy.max() * 1e-3, _EPS) if frame_energy.size else frame_energy.astype(bool)
    if not active.any():
        return None, 0.0
    ac = scipy.fft.irfft(power[active], n=N_FFT, axis=1, workers=1)[:, : N_FFT // 2]
    ac = ac / (ac[:, :1] + _EPS) / _WINDOW_AC[: N_FFT // 2]
    lag_min, lag_max = int(sr / F0_MAX_HZ), int(sr / F0_MIN_HZ)
    window = ac[:, lag_min : lag_max + 1]
    strength = window.max(axis=1)
    # The first lag close to the best one, not the best itself: multiples of the period score as high.
    first = np.argmax(window >= 0.9 * strength[:, None], axis=1)
    # ...then climb to that peak's top, which lies within a few lags.
    span = np.clip(first[:, None] + np.arange(12), 0, window.shape[1] - 1)
    best = span[np.arange(len(first)), np.argmax(np.take_along_axis(window, span, axis=1), axis=1)]
    voiced = strength > VOICING_THRESHOLD
    voiced_count = int(np.count_nonzero(voiced))
    voiced_ratio = voiced_count / len(frame_energy)
    if voiced_count < 3 or voiced_count < MIN_VOICED_SHARE * int(np.count_nonzero(active)):
        return None, voiced_ratio
    # Parabolic interpolation around each peak for sub-sample lag precision.
    idx = np.clip(best[voiced], 1, window.shape[1] - 2)
    rows = window[voiced]
    left, mid, right = (rows[np.arange(len(idx)), idx + k] for k in (-1, 0, 1))
    denom = left - 2 * mid + right
    shift = np.where(np.abs(denom) > _EPS, 0.5 * (left - right) / np.where(denom == 0, 1, denom), 0.0)
    lags = idx + lag_min + np.clip(shift, -0.5, 0.5)
    return round(float(np.median(sr / lags)), 1), voiced_ratio
