"""Decode, downmix and resample audio to 16 kHz mono, and measure the acoustic facts that ground captions.

All facts come from one short-time Fourier transform of the 16 kHz signal (frame 1024, hop 256): the
spectral centroid, the onset envelope (spectral flux of a 40-band mel spectrum), tempo (autocorrelation of
that envelope) and pitch (each frame's autocorrelation is the inverse FFT of its power spectrum), so a
10-second clip costs a few milliseconds of CPU. The transform runs block by block in buffers reused from clip
to clip (no multi-megabyte temporaries to fault in again), and frames of digital silence, such as the gaps of
a composed scene, are not transformed: their spectrum is known to be zero.
"""

from __future__ import annotations

import hashlib
import io
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import scipy.fft
import soxr
from scipy.ndimage import maximum_filter1d, uniform_filter1d

from cotaforge.location import is_remote, open_input
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


# MP3 frames borrow bits from earlier frames (the bit reservoir, up to 511 bytes back: half a second at
# 8 kbit/s), so a window's decoding starts this much earlier and that lead-in is dropped.
MP3_PREROLL_S = 1.0
SEGMENT_END_TOLERANCE_S = 0.05  # a window may end this far past the file's end (rounded times); it is cut there


def decode_audio(path: Path, start_s: float | None = None, end_s: float | None = None,
                 data: bytes | None = None) -> DecodedAudio:
    """Read WAV/FLAC/OGG/MP3 (anything libsndfile reads), downmix to mono and resample to 16 kHz.

    `start_s`/`end_s` select a window: the decoder seeks to it and reads only its frames, so a 10 s window
    of a 10-minute file costs about what a 10 s file does (an MP3 window starts decoding MP3_PREROLL_S early).
    `data` decodes these bytes instead of the file at `path` (which then only names it in messages).
    A URL `path` (see `cotaforge.location`) is fetched whole in one read and checked like a local file.
    Raises AudioDecodeError with reason file_missing, file_empty, decode_failed, file_truncated or
    segment_out_of_range.
    """
    whole_file = None  # a remote file's bytes: decoded from memory, and checked for truncation like a file
    if data is None and is_remote(path):
        data = whole_file = _fetch(path)
    if data is None:
        if not path.is_file():
            raise AudioDecodeError("file_missing", f"{path} does not exist; fix the manifest's path or add the file")
        if path.stat().st_size == 0:
            raise AudioDecodeError("file_empty", f"{path} is empty (0 bytes); replace it with the real recording")
    elif not data:
        raise AudioDecodeError("file_empty", f"{path} holds no audio bytes; replace it with the real recording")
    try:
        with sf.SoundFile(io.BytesIO(data) if data is not None else path) as handle:
            declared_frames = handle.frames
            sample_rate = handle.samplerate
            channels = handle.channels
            first, count = _window_frames(path, declared_frames, sample_rate, start_s, end_s)
            preroll = min(first, round(MP3_PREROLL_S * sample_rate)) if handle.subtype.startswith("MPEG_LAYER") else 0
            if first:
                handle.seek(first - preroll)
            # Integer PCM is read as integers and scaled here: libsndfile's own conversion to float is
            # the slowest step of decoding.
            read_as, full_scale = _INTEGER_READS.get(handle.subtype, ("float32", 1.0))
            samples = handle.read(frames=count + preroll if count >= 0 else -1, dtype=read_as, always_2d=True)
            samples = samples[preroll:]
    except AudioDecodeError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioDecodeError("decode_failed", f"{path} could not be decoded as audio ({exc}); "
                                                "check it is a WAV, FLAC, OGG or MP3 file") from exc
    if whole_file is not None:
        declared_bytes, available_bytes = _wav_data_sizes_in(io.BytesIO(whole_file), len(whole_file))
    else:
        declared_bytes, available_bytes = _wav_data_sizes(path) if data is None else (0, 0)
    expected_frames = count if count >= 0 else declared_frames
    if declared_bytes > available_bytes or (expected_frames > 0 and len(samples) < expected_frames):
        raise AudioDecodeError("file_truncated", f"{path} is truncated: its header declares more audio than the "
                                                 "file holds; re-export or re-download it")
    if len(samples) == 0:
        raise AudioDecodeError("file_empty", f"{path} holds no audio frames; replace it with the real recording")
    mono = _downmix(samples, full_scale)
    if not np.all(np.isfinite(mono)):
        raise AudioDecodeError("decode_failed", f"{path} decodes to NaN or infinite samples; re-export it")
    clipping_ratio = float(np.count_nonzero(np.abs(mono) >= CLIP_LEVEL)) / len(mono)
    if sample_rate != SAMPLE_RATE_HZ:
        mono = soxr.resample(mono, sample_rate, SAMPLE_RATE_HZ, quality="HQ").astype(np.float32, copy=False)
    return DecodedAudio(np.ascontiguousarray(mono, dtype=np.float32), sample_rate, channels, clipping_ratio)


def _window_frames(path: Path, frames: int, sample_rate: int, start_s: float | None,
                   end_s: float | None) -> tuple[int, int]:
    """(first frame, frame count or -1 for the rest) of a window; segment_out_of_range past the file's end."""
    if start_s is None and end_s is None:
        return 0, -1
    duration_s = frames / sample_rate
    start = start_s or 0.0
    if start >= duration_s or (end_s is not None and end_s > duration_s + SEGMENT_END_TOLERANCE_S):
        window = f"{start:g}-{end_s:g} s" if end_s is not None else f"from {start:g} s"
        raise AudioDecodeError("segment_out_of_range", f"{path} lasts {duration_s:.3f} s, so the window {window} "
                                                       "is past its end; fix the row's start/end or the file")
    first = round(start * sample_rate)
    last = frames if end_s is None else min(frames, round(end_s * sample_rate))
    return first, last - first


_INTEGER_READS = {"PCM_S8": ("int16", 32768.0), "PCM_U8": ("int16", 32768.0), "PCM_16": ("int16", 32768.0),
                  "PCM_24": ("int32", 2.0**31), "PCM_32": ("int32", 2.0**31)}


def _downmix(data: np.ndarray, full_scale: float) -> np.ndarray:
    """Average of the channels as float32 in [-1, 1]. Column sums are many times faster than `mean(axis=1)`."""
    mono = data[:, 0].astype(np.float32)
    for channel in range(1, data.shape[1]):
        mono += data[:, channel]
    mono *= np.float32(1.0 / (data.shape[1] * full_scale))
    return mono


def _fetch(path: Path) -> bytes:
    """A remote audio file's bytes; AudioDecodeError file_missing when there is no such object."""
    try:
        with open_input(path) as handle:
            return handle.read()
    except (FileNotFoundError, IsADirectoryError):
        raise AudioDecodeError("file_missing", f"{path} does not exist; fix the manifest's path or add the file") from None


def _wav_data_sizes(path: Path) -> tuple[int, int]:
    """(bytes the RIFF 'data' chunk declares, bytes actually there); (0, 0) for other formats.

    libsndfile quietly shortens a cut-off WAV to what is left, so the header is checked here.
    """
    with path.open("rb") as handle:
        return _wav_data_sizes_in(handle, path.stat().st_size)


def _wav_data_sizes_in(handle, size: int) -> tuple[int, int]:
    """`_wav_data_sizes` of an open binary file of `size` bytes."""
    header = handle.read(12)
    if len(header) < 12 or header[:4] not in (b"RIFF", b"RF64") or header[8:12] != b"WAVE":
        return 0, 0
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
_FREQS_HZ = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE_HZ).astype(np.float32)
_LAG_MIN = int(SAMPLE_RATE_HZ / F0_MAX_HZ)  # pitch lags searched, in samples
_LAG_MAX = int(SAMPLE_RATE_HZ / F0_MIN_HZ)
_WINDOW_AC_LAGS = _WINDOW_AC[_LAG_MIN:_LAG_MAX + 1]

# STFT frames transformed at once, and power spectra gathered before their autocorrelations are taken
# together: no temporary exceeds ~530 kB whatever the clip's length (see _Workspace), and blocks are large
# enough that a 10 s clip is still cheaper than in one piece.
BLOCK_FRAMES = 128
PITCH_ROWS = 128
SILENT_RUN_FRAMES = 8  # stretches of all-zero frames at least this long are skipped, not transformed


class _Workspace(threading.local):
    """Buffers reused from clip to clip, one set per thread (about 1.5 MB).

    Whole-clip temporaries of several megabytes are handed back to the system when freed and faulted in
    again on the next call: in a process that holds other data (compose's rendered scenes) that page-fault
    work cost more CPU than the arithmetic itself.
    """

    def __init__(self) -> None:
        self.chunk = np.zeros((BLOCK_FRAMES - 1) * HOP + N_FFT, dtype=np.float32)
        self.frames = np.empty((BLOCK_FRAMES, N_FFT), dtype=np.float32)
        self.power = np.empty((BLOCK_FRAMES, N_FFT // 2 + 1), dtype=np.float32)
        self.mel = np.empty((BLOCK_FRAMES, N_MELS), dtype=np.float32)
        # Complex with zero imaginary parts, as the inverse real FFT wants its input (given real input it
        # would make that copy itself).
        self.pitch_power = np.zeros((PITCH_ROWS, N_FFT // 2 + 1), dtype=np.complex64)


_WORKSPACE = _Workspace()


def dbfs(value: float) -> float:
    return float(20.0 * np.log10(max(value, _EPS)))


def rms_dbfs(samples: np.ndarray) -> float:
    """RMS level of a stretch of samples in dB relative to full scale (an empty stretch is -200 dBFS).
    A dot product, not a squared copy: compose measures every event of every scene with it."""
    rms = math.sqrt(float(np.dot(samples, samples)) / len(samples)) if len(samples) else 0.0
    return dbfs(rms)


@dataclass
class _FrameMeasures:
    """Per-STFT-frame measures of a clip; frames never transformed (all-zero stretches) keep their zeros."""

    energy: np.ndarray  # float32: sum of the power spectrum
    freq_weighted: np.ndarray  # float32: power-weighted sum of bin frequencies (centroid numerator)
    log_mel: np.ndarray  # float32 (frames, N_MELS): log(1 + 10 * mel power)
    pitch_strength: np.ndarray  # float32: best normalised autocorrelation in the pitch range; -inf if not measured
    pitch_lag: np.ndarray  # float64: lag of the pitch peak in samples (sub-sample), where measured


def acoustic_facts(samples: np.ndarray, clipping_ratio: float = 0.0) -> AcousticFacts:
    """Measure duration, level, clipping, silence, brightness, onsets, tempo and pitch of a 16 kHz clip.

    `samples` is mono at SAMPLE_RATE_HZ (float32; other float types are converted). Never raises on audio
    content: silent or empty clips get a -200 dBFS level, no onsets and no pitch.
    """
    sr = SAMPLE_RATE_HZ
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    n = len(samples)
    duration_s = n / sr
    peak = max(float(samples.max()), -float(samples.min())) if n else 0.0

    # Silence on 25 ms frames (400 samples), independent of the STFT framing; the level sums the same
    # per-frame sums of squares in float64.
    frame_len = 400
    usable = n // frame_len * frame_len
    framed = samples[:usable].reshape(-1, frame_len)
    frame_sumsq = np.einsum("ij,ij->i", framed, framed)
    rest = samples[usable:].astype(np.float64)
    rms = math.sqrt((float(frame_sumsq.sum(dtype=np.float64)) + float(rest @ rest)) / n) if n else 0.0
    if usable:
        frame_rms = np.sqrt(frame_sumsq / np.float32(frame_len))
        silence_ratio = float(np.mean(frame_rms < 10 ** (SILENCE_FRAME_DBFS / 20)))
    else:
        silence_ratio = 1.0 if rms < 10 ** (SILENCE_FRAME_DBFS / 20) else 0.0

    measures = _stft_measures(samples)
    frame_energy = measures.energy
    loud = frame_energy > frame_energy.max() * 1e-4
    if loud.any():
        centroids = measures.freq_weighted[loud] / (frame_energy[loud] + _EPS)
        centroid_hz = float(np.average(centroids, weights=frame_energy[loud]))
    else:
        centroid_hz = 0.0

    # Onsets: positive spectral flux of the log-mel spectrum, peaks above a local adaptive threshold.
    log_mel = measures.log_mel
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

    f0_median_hz, voiced_ratio = _pitch(measures)
    return AcousticFacts(
        duration_s=round(duration_s, 4),
        loudness_dbfs=round(dbfs(rms), 2),
        peak_dbfs=round(dbfs(peak), 2),
        clipping_ratio=round(clipping_ratio, 5),
        silence_ratio=round(silence_ratio, 4),
        spectral_centroid_hz=round(centroid_hz, 1),
        onset_count=onset_count,
        tempo_bpm=tempo_bpm,
        f0_median_hz=f0_median_hz,
        voiced_ratio=round(voiced_ratio, 4),
    )


def _stft_blocks(samples: np.ndarray, frame_count: int) -> list[tuple[int, int]]:
    """(first, end) frame ranges to transform, at most BLOCK_FRAMES each, leaving out all-zero stretches.

    Frames are centred (half a frame of zeros each side of the clip), so frame f spans samples
    [f * HOP - N_FFT / 2, f * HOP + N_FFT / 2). A frame of zeros has an all-zero spectrum, which is what
    the measures start as, so skipping it changes nothing; scenes with silent gaps skip a third of their frames.
    """
    n = len(samples)
    full_hops = n // HOP
    # Whether each hop-long stretch of the padded signal holds a non-zero sample (2 hops of padding first).
    sounding = np.zeros(frame_count + 3, dtype=bool)
    if full_hops:
        sounding[2:2 + full_hops] = (samples[:full_hops * HOP].reshape(full_hops, HOP) != 0).any(axis=1)
    if n > full_hops * HOP:
        sounding[2 + full_hops] = bool(np.any(samples[full_hops * HOP:]))
    # A frame spans 4 hops of the padded signal.
    sounding_frames = np.flatnonzero(sounding[:frame_count] | sounding[1:frame_count + 1]
                                     | sounding[2:frame_count + 2] | sounding[3:frame_count + 3])
    if not len(sounding_frames):
        return []
    # Short silent stretches are transformed anyway: a block costs more than a few frames.
    breaks = np.flatnonzero(np.diff(sounding_frames) > SILENT_RUN_FRAMES)
    starts = [int(sounding_frames[0])] + (sounding_frames[breaks + 1]).tolist()
    ends = (sounding_frames[breaks] + 1).tolist() + [int(sounding_frames[-1]) + 1]
    blocks = []
    for start, end in zip(starts, ends):
        pieces = -(-(end - start) // BLOCK_FRAMES)
        size = -(-(end - start) // pieces)
        blocks.extend((first, min(first + size, end)) for first in range(start, end, size))
    return blocks


def _stft_measures(samples: np.ndarray) -> _FrameMeasures:
    """One pass of the STFT (frame N_FFT, hop HOP, Hann window) over a float32 clip, block by block.

    Each block's power spectrum gives the frame energy, the centroid's numerator and the log-mel row; the
    spectra of frames loud enough to be asked for a pitch are gathered, and their autocorrelations (inverse
    FFT of the power spectrum) taken PITCH_ROWS at a time.
    """
    n = len(samples)
    count = 1 + n // HOP
    energy = np.zeros(count, dtype=np.float32)
    freq_weighted = np.zeros(count, dtype=np.float32)
    log_mel = np.zeros((count, N_MELS), dtype=np.float32)
    strength = np.full(count, -np.inf, dtype=np.float32)
    lag = np.zeros(count, dtype=np.float64)
    work = _WORKSPACE
    mel_t = _mel_matrix().T
    loudest = np.float32(0.0)
    pending: list[np.ndarray] = []  # frame numbers whose spectra wait in work.pitch_power, in order
    pending_rows = 0
    item = samples.itemsize
    for first, end in _stft_blocks(samples, count):
        k = end - first
        start, stop = first * HOP - N_FFT // 2, (end - 1) * HOP + N_FFT // 2
        if start >= 0 and stop <= n:
            source = samples[start:stop]
        else:  # a block at an edge of the clip: copy it between zeros
            source = work.chunk[:stop - start]
            lo, hi = max(start, 0), min(stop, n)
            source[:lo - start] = 0.0
            source[lo - start:hi - start] = samples[lo:hi]
            source[hi - start:] = 0.0
        view = np.lib.stride_tricks.as_strided(source, shape=(k, N_FFT), strides=(HOP * item, item),
                                               writeable=False)
        frames = np.multiply(view, _WINDOW, out=work.frames[:k])
        # scipy's FFT keeps float32 and is several times faster here than numpy's.
        spectrum = scipy.fft.rfft(frames, axis=1, workers=1)
        parts = spectrum.view(np.float32)  # real and imaginary parts interleaved
        np.square(parts, out=parts)
        power = np.add(parts[:, 0::2], parts[:, 1::2], out=work.power[:k])
        del spectrum, parts
        block_energy = power.sum(axis=1)
        energy[first:end] = block_energy
        np.matmul(power, _FREQS_HZ, out=freq_weighted[first:end])
        mel = np.matmul(power, mel_t, out=work.mel[:k])
        mel *= np.float32(10.0)
        np.log1p(mel, out=log_mel[first:end])
        # Pitch only for frames that may turn out active (see _pitch): the loudest frame so far can only
        # rise, so this threshold never exceeds the final one.
        loudest = max(loudest, block_energy.max())
        candidates = np.flatnonzero(block_energy > max(loudest * 1e-3, _EPS))
        for piece in range(0, len(candidates), PITCH_ROWS):
            chosen = candidates[piece:piece + PITCH_ROWS]
            if pending_rows + len(chosen) > PITCH_ROWS:
                _store_pitches(work.pitch_power[:pending_rows], pending, strength, lag)
                pending, pending_rows = [], 0
            np.take(power, chosen, axis=0, out=work.pitch_power.real[pending_rows:pending_rows + len(chosen)])
            pending.append(first + chosen)
            pending_rows += len(chosen)
    if pending:
        _store_pitches(work.pitch_power[:pending_rows], pending, strength, lag)
    return _FrameMeasures(energy, freq_weighted, log_mel, strength, lag)


def _store_pitches(power: np.ndarray, frame_numbers: list[np.ndarray], strength: np.ndarray,
                   lag: np.ndarray) -> None:
    """Pitch strength and lag of the gathered power spectra, written to their frames' places."""
    where = np.concatenate(frame_numbers)
    strength[where], lag[where] = _frame_pitch(power)


_PEAK_SPAN = np.arange(12)  # lags searched above the first near-best lag for the top of its peak


def _frame_pitch(power: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: the strength of the best normalised autocorrelation peak between F0_MAX_HZ and F0_MIN_HZ,
    and its lag in samples (parabolic interpolation around the peak for sub-sample precision)."""
    ac = scipy.fft.irfft(power, n=N_FFT, axis=1, workers=1)
    zero_lag = ac[:, :1] + _EPS
    window = ac[:, _LAG_MIN:_LAG_MAX + 1]  # normalised in place: the rest of `ac` is not needed
    np.divide(window, zero_lag, out=window)
    np.divide(window, _WINDOW_AC_LAGS, out=window)
    strength = window.max(axis=1)
    last = window.shape[1] - 1
    # The first lag close to the best one, not the best itself: multiples of the period score as high.
    first = np.argmax(window >= 0.9 * strength[:, None], axis=1)
    # ...then climb to that peak's top, which lies within a few lags.
    span = first[:, None] + _PEAK_SPAN
    np.minimum(span, last, out=span)
    rows = np.arange(len(first))
    best = span[rows, np.argmax(window[rows[:, None], span], axis=1)]
    idx = np.minimum(np.maximum(best, 1), last - 1)
    left, mid, right = window[rows, idx - 1], window[rows, idx], window[rows, idx + 1]
    denom = left - 2 * mid + right
    shift = np.where(np.abs(denom) > _EPS, 0.5 * (left - right) / np.where(denom == 0, 1, denom), 0.0)
    return strength, idx + _LAG_MIN + np.minimum(np.maximum(shift, -0.5), 0.5)


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


def _pitch(measures: _FrameMeasures) -> tuple[float | None, float]:
    """Median f0 of the voiced frames among the active ones (energy within 30 dB of the loudest frame), and
    the share of all frames that are voiced."""
    frame_energy = measures.energy
    active = frame_energy > max(frame_energy.max() * 1e-3, _EPS)
    if not active.any():
        return None, 0.0
    voiced = active & (measures.pitch_strength > VOICING_THRESHOLD)
    voiced_count = int(np.count_nonzero(voiced))
    voiced_ratio = voiced_count / len(frame_energy)
    if voiced_count < 3 or voiced_count < MIN_VOICED_SHARE * int(np.count_nonzero(active)):
        return None, voiced_ratio
    return round(float(np.median(SAMPLE_RATE_HZ / measures.pitch_lag[voiced])), 1), voiced_ratio
