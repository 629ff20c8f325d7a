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

from cotaforge.config import RunConfig, load_config
from cotaforge.cot import render_assistant_text
from cotaforge.models import COT_STAGES
from cotaforge.stages.balance import sample_rank
from cotaforge.stages.ingest import load_run_stats, read_clips
from cotaforge.store import RunDir

# The text fields an annotator may edit; `assistant_text` and `validation` are rebuilt from them.
EDIT_FIELDS = ("question", "options", "answer", *COT_STAGES)
STORED_EDIT_FIELDS = (*EDIT_FIELDS, "assistant_text", "validation")
_CACHE_ROWS = 512


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
        for batch in range(run.batch_count()):
            table = run.read_part("balance", batch, ["sample_id", "clip_id", "class_label", "prompt_style",
                                                     "question_type", "validation"])
            for sid, cid, cls, style, qtype, validation in zip(*(c.to_pylist() for c in table.columns)):
                flags = tuple(json.loads(validation or "{}").get("flags", []))
                rank = sample_rank(self.cfg.run.seed, "review:" + sid) / 2.0 ** 64
                self.entries.append(Entry(sid, cid, batch, cls, style, qtype, flags, rank))
            for cid in read_clips(run, batch, stats)["clip_id"].to_pylist():
                self.clip_batch.setdefault(cid, batch)
        self.by_id = {e.sample_id: e for e in self.entries}
        self.sample = lru_cache(maxsize=_CACHE_ROWS)(self._read_sample)
        self.clip = lru_cache(maxsize=_CACHE_ROWS)(self._read_clip)
        self.spectrogram_png = lru_cache(maxsize=64)(self._spectrogram_png)

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
        path = self.run.part_path("ingest", self.clip_batch[clip_id])
        columns = [c for c in pq.read_schema(path).names if c != "audio_wav"]
        return pq.read_table(path, columns=columns, filters=[("clip_id", "=", clip_id)]).to_pylist()[0]

    def audio_wav(self, clip_id: str) -> bytes:
        path = self.run.part_path("ingest", self.clip_batch[clip_id])
        table = pq.read_table(path, columns=["audio_wav"], filters=[("clip_id", "=", clip_id)])
        return table["audio_wav"][0].as_py()

    def _spectrogram_png(self, clip_id: str) -> bytes:
        return spectrogram_png(self.audio_wav(clip_id))


def spectrogram_png(wav: bytes, n_fft: int = 512, hop: int = 128, max_columns: int = 1200) -> bytes:
    """A log-power spectrogram (time left to right, low frequencies at the bottom) as PNG bytes."""
    from matplotlib.image import imsave

    from cotaforge.audio import read_wav_bytes

    samples = np.asarray(read_wav_bytes(wav), dtype=np.float32)
    if samples.ndim > 1:
        samples = samples.mean(axis=1)
    samples = np.pad(samples, (0, max(n_fft - len(samples), 0)))
    frames = np.lib.stride_tricks.sliding_window_view(samples, n_fft)[::hop] * np.hanning(n_fft).astype(np.float32)
    power_db = 10.0 * np.log10(np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e-10)
    if len(power_db) > max_columns:  # long clips: average neighbouring frames so the image stays small
        step = int(np.ceil(len(power_db) / max_columns))
        usable = len(power_db) // step * step
        power_db = power_db[:usable].reshape(-1, step, power_db.shape[1]).mean(axis=1)
    power_db = np.clip(power_db, power_db.max() - 80.0, None)
    buffer = io.BytesIO()
    imsave(buffer, power_db.T, cmap="magma", origin="lower", format="png")
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
    revised = {**sample, **edits}
    revised["assistant_text"] = render_assistant_text({s: str(revised[s]) for s in COT_STAGES})
    passed, rejects = validate_samples([revised], {clip["clip_id"]: clip}, cfg)
    if rejects:
        return None, rejects[0].reasons
    return passed[0], []


def stored_fields(revised: dict) -> dict:
    """The part of a revised sample that a revision stores."""
    return {name: revised[name] for name in STORED_EDIT_FIELDS}


def apply_revision(sample: dict, fields: dict) -> dict:
    return {**sample, **{name: fields[name] for name in STORED_EDIT_FIELDS if name in fields}}
