"""What the review app reads from a run directory: the balanced samples, their clips, audio and spectrograms.

Only a small index (ids, cell, flags) is held in memory; a sample or clip row is read from its part on demand
and kept in a small cache, so a run of any size opens in seconds. Audio is looked up by clip id in the index,
never by a path taken from a request.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow.parquet as pq

from cotaforge.config import SCENE_KINDS, RunConfig, load_config
from cotaforge.cot import render_assistant_text
from cotaforge.decisions import EDIT_FIELDS, STORED_EDIT_FIELDS
from cotaforge.models import COT_STAGES
from cotaforge.stages.balance import sample_rank
from cotaforge.stages.ingest import load_run_stats, read_clips
from cotaforge.store import RunDir

_CACHE_ROWS = 512
# Where the plot area sits inside the spectrogram image, as fractions of its width: the page's playhead
# is drawn over that span.
SPECTROGRAM_PLOT_LEFT = 0.07
SPECTROGRAM_PLOT_RIGHT = 0.99
_SEARCH_TEXT = ("question", "options", "answer", *COT_STAGES)


@dataclass(frozen=True)
class Entry:
    """One balanced sample in the review queue."""

    sample_id: str
    clip_id: str
    batch: int
    class_label: str
    prompt_style: str
    question_type: str
    flags: tuple[str, ...]
    rank: float  # in [0, 1): a seeded hash, orders samples inside a cell and picks the doubly annotated ones

    @property
    def cell(self) -> tuple[str, str, str]:
        return self.class_label, self.prompt_style, self.question_type


def load_run_config(run: RunDir) -> RunConfig:
    """The config the run was made with (`<run>/config.yaml`), or the defaults."""
    path = run.root / "config.yaml"
    return load_config(path) if path.is_file() else RunConfig()


class RunSamples:
    """The balanced samples of one run, indexed by sample id, and their clips indexed by clip id."""

    def __init__(self, run: RunDir, cfg: RunConfig | None = None) -> None:
        if not (run.root / "balance").is_dir():
            raise FileNotFoundError(f"{run.root / 'balance'} is missing: run the pipeline up to balance first "
                                    "(`cotaforge run CONFIG.yaml` or `cotaforge balance CONFIG.yaml`)")
        self.run = run
        self.cfg = cfg or load_run_config(run)
        stats = load_run_stats(run)
        self.entries: list[Entry] = []
        self.clip_batch: dict[str, int] = {}
        self.clip_stage: dict[str, str] = {}  # the stage whose part holds the clip: scenes are compose's
        for batch in range(run.batch_count()):
            table = run.read_part("balance", batch, ["sample_id", "clip_id", "class_label", "prompt_style",
                                                     "question_type", "validation"])
            for sid, cid, cls, style, qtype, validation in zip(*(c.to_pylist() for c in table.columns)):
                flags = tuple(json.loads(validation or "{}").get("flags", []))
                rank = sample_rank(self.cfg.run.seed, "review:" + sid) / 2.0 ** 64
                self.entries.append(Entry(sid, cid, batch, cls, style, qtype, flags, rank))
            clips = read_clips(run, batch, stats)
            for cid, kind in zip(clips["clip_id"].to_pylist(), clips["scene_kind"].to_pylist()):
                self.clip_batch.setdefault(cid, batch)
                self.clip_stage.setdefault(cid, "compose" if kind in SCENE_KINDS else "ingest")
        self.by_id = {e.sample_id: e for e in self.entries}
        self.sample = lru_cache(maxsize=_CACHE_ROWS)(self._read_sample)
        self.clip = lru_cache(maxsize=_CACHE_ROWS)(self._read_clip)
        self.spectrogram_png = lru_cache(maxsize=64)(self._spectrogram_png)
        # A seek in a long clip sends several range requests in a row: keep the last few clips' bytes.
        self.audio_wav = lru_cache(maxsize=8)(self._audio_wav)

    def target(self, entry: Entry) -> int:
        """How many annotators should see the sample: 2 for the configured fraction, else 1."""
        return 2 if entry.rank < self.cfg.review.double_fraction else 1

    def choices(self) -> dict[str, list[str]]:
        """The values each queue filter can take."""
        return {
            "class": sorted({e.class_label for e in self.entries}),
            "style": sorted({e.prompt_style for e in self.entries}),
            "type": sorted({e.question_type for e in self.entries}),
            "flag": sorted({f for e in self.entries for f in e.flags}),
        }

    def _read_sample(self, sample_id: str) -> dict:
        entry = self.by_id[sample_id]
        table = pq.read_table(self.run.part_path("balance", entry.batch), filters=[("sample_id", "=", sample_id)])
        return table.to_pylist()[0]

    def _read_clip(self, clip_id: str) -> dict:
        """The clip's row without its audio."""
        path = self.run.part_path(self.clip_stage[clip_id], self.clip_batch[clip_id])
        columns = [c for c in pq.read_schema(path).names if c != "audio_wav"]
        return pq.read_table(path, columns=columns, filters=[("clip_id", "=", clip_id)]).to_pylist()[0]

    def _audio_wav(self, clip_id: str) -> bytes:
        path = self.run.part_path(self.clip_stage[clip_id], self.clip_batch[clip_id])
        table = pq.read_table(path, columns=["audio_wav"], filters=[("clip_id", "=", clip_id)])
        return table["audio_wav"][0].as_py()

    def _spectrogram_png(self, clip_id: str) -> bytes:
        return spectrogram_png(self.audio_wav(clip_id))

    def search(self, query: str, limit: int = 100) -> list[Entry]:
        """Samples whose id starts with `query`, whose class contains it, or whose text does (any case).

        Ids and classes come from the index; text is read part by part, so memory stays small.
        """
        needle = " ".join(query.split()).casefold()
        if not needle:
            return []
        found = [e for e in self.entries if e.sample_id.startswith(needle) or needle in e.class_label.casefold()]
        seen = {e.sample_id for e in found}
        for batch in range(self.run.batch_count()):
            if len(found) >= limit:
                break
            table = self.run.read_part("balance", batch, ["sample_id", *_SEARCH_TEXT])
            columns = [table[c].to_pylist() for c in _SEARCH_TEXT]
            for index, sample_id in enumerate(table["sample_id"].to_pylist()):
                if sample_id in seen or sample_id not in self.by_id:
                    continue
                text = " ".join(" ".join(v) if isinstance(v, list) else str(v) for v in (c[index] for c in columns))
                if needle in " ".join(text.split()).casefold():
                    found.append(self.by_id[sample_id])
                    seen.add(sample_id)
        return found[:limit]


def spectrogram_png(wav: bytes, n_fft: int = 512, hop: int = 128, max_columns: int = 1200) -> bytes:
    """A log-power spectrogram as PNG bytes, with a time axis (seconds) and a frequency axis (kHz).

    The plot area spans SPECTROGRAM_PLOT_LEFT..SPECTROGRAM_PLOT_RIGHT of the image's width, from 0 s to the
    clip's end, so the page can draw a playhead over it.
    """
    import soundfile
    from matplotlib.figure import Figure

    samples, rate_hz = soundfile.read(io.BytesIO(wav), dtype="float32")
    if samples.ndim > 1:
        samples = samples.mean(axis=1)
    duration_s = len(samples) / rate_hz
    samples = np.pad(samples, (0, max(n_fft - len(samples), 0)))
    frames = np.lib.stride_tricks.sliding_window_view(samples, n_fft)[::hop] * np.hanning(n_fft).astype(np.float32)
    power_db = 10.0 * np.log10(np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e-10)
    if len(power_db) > max_columns:  # long clips: average neighbouring frames so the image stays small
        step = int(np.ceil(len(power_db) / max_columns))
        usable = len(power_db) // step * step
        power_db = power_db[:usable].reshape(-1, step, power_db.shape[1]).mean(axis=1)
    power_db = np.clip(power_db, power_db.max() - 80.0, None)
    # A figure object of its own (no pyplot): safe in a threaded server.
    figure = Figure(figsize=(12.0, 2.4), dpi=100)
    axes = figure.add_axes((SPECTROGRAM_PLOT_LEFT, 0.2, SPECTROGRAM_PLOT_RIGHT - SPECTROGRAM_PLOT_LEFT, 0.74))
    axes.imshow(power_db.T, cmap="magma", origin="lower", aspect="auto", interpolation="nearest",
                extent=(0.0, max(duration_s, 1e-3), 0.0, rate_hz / 2000.0))
    axes.set_xlabel("time (s)", fontsize=9, labelpad=1)
    axes.set_ylabel("frequency (kHz)", fontsize=9)
    axes.tick_params(labelsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def revise_sample(sample: dict, edits: dict[str, object], clip: dict, cfg: RunConfig) -> tuple[dict | None, list[str]]:
    """Apply edited text fields to a sample and validate the result as the validate stage would.

    `edits` maps names of EDIT_FIELDS to new values (`options` as a list of texts). Returns the revised
    row and no reasons when it passes, or None and the validator's reason codes.
    """
    from cotaforge.stages.validate import validate_samples

    unknown = set(edits) - set(EDIT_FIELDS)
    if unknown:
        raise ValueError(f"fields {sorted(unknown)} cannot be edited; edit only {', '.join(EDIT_FIELDS)}")
    if edits.get("options") and not sample["options"]:
        return None, ["options_not_allowed"]  # only a multiple-choice question has options
    revised = {**sample, **edits}
    revised["assistant_text"] = render_assistant_text({s: str(revised[s]) for s in COT_STAGES})
    passed, rejects = validate_samples([revised], {clip["clip_id"]: clip}, cfg)
    if rejects:
        return None, rejects[0].reasons
    return passed[0], []


def stored_fields(revised: dict) -> dict:
    """The part of a revised sample that a revision stores."""
    return {name: revised[name] for name in STORED_EDIT_FIELDS}
