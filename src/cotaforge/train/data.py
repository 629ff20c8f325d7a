"""From published Parquet shards to model inputs: prompt rendering, streaming, length buckets, collation.

A training epoch reads the split's Parquet row groups (across all shards) in a seeded order and cuts the
row stream into pools of `pool_rows` rows. Each pool is encoded, shuffled, sorted by length into
micro-batches (so padding stays small), and the batches are shuffled. Everything is a function of (seed, epoch, pool), so a
`DataPosition` (epoch, pool, batch) is enough to resume exactly where a run stopped.
"""

from __future__ import annotations

import io
import json
import string
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq
import soundfile as sf

from cotaforge.cot import render_user_text
from cotaforge.models import SAMPLE_RATE_HZ, SYSTEM_PROMPT

if TYPE_CHECKING:
    import torch

    from cotaforge.train.config import AugmentSection

LETTERS = string.ascii_uppercase  # option letters, as cotaforge.cot.option_letter gives them
END_OF_TURN = "<|im_end|>"
IGNORE_INDEX = -100
# Samples whose lengths differ by less than this share a bucket; batches still change between epochs.
BUCKET_WIDTH_TOKENS = 16
TRAIN_COLUMNS = ["audio", "question", "options", "question_type", "assistant_text"]
__all__ = ["render_user_text", "build_messages", "split_shards", "iter_rows", "BucketedBatches", "collate"]


def build_messages(user_text: str, assistant_text: str | None = None, audio: bool = True) -> list[dict[str, Any]]:
    """Chat messages in the shape Qwen2-Audio's chat template expects (the audio comes before the text)."""
    user_content = [{"type": "audio"}] if audio else []
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": [*user_content, {"type": "text", "text": user_text}]},
    ]
    if assistant_text is not None:
        messages.append({"role": "assistant", "content": assistant_text})
    return messages


def decode_wav(data: bytes) -> np.ndarray:
    """A WAV file's bytes as float32 mono at 16 kHz."""
    samples, sample_rate_hz = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if sample_rate_hz != SAMPLE_RATE_HZ:
        raise ValueError(
            f"audio is {sample_rate_hz} Hz but published shards hold {SAMPLE_RATE_HZ} Hz; re-publish the dataset"
        )
    return np.ascontiguousarray(mono, dtype=np.float32)


def split_shards(dataset_dir: Path, split: str) -> list[Path]:
    """The Parquet shards of one split, in name order, from manifest.json (or the data folder without one)."""
    manifest_path = dataset_dir / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        paths = sorted(dataset_dir / shard["path"] for shard in manifest["shards"] if shard["split"] == split)
    else:
        paths = sorted((dataset_dir / "data").glob(f"{split}-*.parquet"))
    if not paths:
        raise ValueError(
            f"no '{split}' shards in {dataset_dir}: point data.dataset_dir at a published dataset "
            "(output/datasets/<name>/<version>) that has this split"
        )
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise ValueError(f"shards listed in {manifest_path} are missing: {missing[:3]}; re-publish the dataset")
    return paths


def iter_rows(paths: Sequence[Path], columns: Sequence[str] | None = None,
              max_rows: int | None = None) -> Iterator[dict[str, Any]]:
    """Rows of the shards in order, as dicts, reading one record batch at a time."""
    produced = 0
    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=256, columns=list(columns) if columns else None):
            for row in batch.to_pylist():
                if max_rows is not None and produced >= max_rows:
                    return
                produced += 1
                yield row


def augment_waveform(samples: np.ndarray, cfg: "AugmentSection", rng: np.random.Generator) -> np.ndarray:
    """Speed, gain, noise and leading-silence perturbation; the same rng state gives the same result."""
    if cfg.speed_range != (1.0, 1.0):
        speed = rng.uniform(*cfg.speed_range)
        new_length = max(1, int(round(len(samples) / speed)))
        samples = np.interp(np.linspace(0, len(samples) - 1, new_length), np.arange(len(samples)), samples)
    if cfg.gain_db_range != (0.0, 0.0):
        samples = samples * 10 ** (rng.uniform(*cfg.gain_db_range) / 20)
    if cfg.noise_snr_db_min is not None:
        snr_db = rng.uniform(cfg.noise_snr_db_min, cfg.noise_snr_db_min + 30)
        signal_rms = float(np.sqrt(np.mean(samples**2))) + 1e-8
        samples = samples + rng.normal(0, signal_rms / 10 ** (snr_db / 20), len(samples))
    if cfg.shift_max_s > 0:
        samples = np.concatenate([np.zeros(int(rng.uniform(0, cfg.shift_max_s) * SAMPLE_RATE_HZ)), samples])
    return np.clip(samples, -1.0, 1.0).astype(np.float32)


@dataclass
class EncodedSample:
    """One sample as token ids and audio features (None for a text-only sample); the loss covers ids from
    `prompt_tokens` on."""

    input_ids: list[int]
    prompt_tokens: int
    input_features: np.ndarray | None
    feature_attention_mask: np.ndarray | None

    @property
    def length_tokens(self) -> int:
        return len(self.input_ids)


class SampleEncoder:
    """Turns a row into an `EncodedSample` with the model's processor (prompt by its chat template)."""

    def __init__(self, processor: Any, max_tokens: int, feature_device: str = "cpu") -> None:
        self.processor = processor
        self.max_tokens = max_tokens
        # Mel features of a 30 s window cost about 20 ms of CPU each, which would stall a GPU's training step;
        # on the GPU they take well under a millisecond.
        self.feature_device = feature_device
        feature_extractor = processor.feature_extractor
        self.window_samples = int(feature_extractor.n_samples)
        self.end_of_turn_id = processor.tokenizer.convert_tokens_to_ids(END_OF_TURN)
        if self.end_of_turn_id is None or self.end_of_turn_id == processor.tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {END_OF_TURN} token; use a Qwen2-Audio processor")

    def prompt_text(self, user_text: str, audio: bool = True) -> str:
        return self.processor.apply_chat_template(build_messages(user_text, audio=audio), add_generation_prompt=True,
                                                  tokenize=False)

    def encode_prompt(self, samples: np.ndarray, user_text: str) -> dict[str, np.ndarray]:
        """The processor's output for the prompt: ids with expanded audio tokens, mel features and mask."""
        samples = samples[: self.window_samples]  # the encoder sees one window; a longer clip is cut
        return self.processor(text=[self.prompt_text(user_text)], audio=[samples],
                              sampling_rate=SAMPLE_RATE_HZ, return_tensors="np", device=self.feature_device)

    def encode(self, samples: np.ndarray, user_text: str, assistant_text: str) -> EncodedSample | None:
        """Prompt plus assistant answer; None when longer than `max_tokens` (the caller counts it)."""
        prompt = self.encode_prompt(samples, user_text)
        prompt_ids = [int(token) for token in prompt["input_ids"][0]]
        return self._with_answer(prompt_ids, assistant_text, prompt["input_features"][0],
                                 prompt["feature_attention_mask"][0])

    def encode_text(self, user_text: str, assistant_text: str) -> EncodedSample | None:
        """The same sample without its audio: the prompt has no audio part and there are no features."""
        prompt_ids = self.processor.tokenizer(self.prompt_text(user_text, audio=False),
                                              add_special_tokens=False)["input_ids"]
        return self._with_answer(list(prompt_ids), assistant_text, None, None)

    def _with_answer(self, prompt_ids: list[int], assistant_text: str, features: np.ndarray | None,
                     feature_mask: np.ndarray | None) -> EncodedSample | None:
        answer_ids = self.processor.tokenizer(assistant_text, add_special_tokens=False)["input_ids"]
        input_ids = prompt_ids + list(answer_ids) + [self.end_of_turn_id]
        if len(input_ids) > self.max_tokens:
            return None
        return EncodedSample(input_ids, len(prompt_ids), features, feature_mask)


def response_only(sample: EncodedSample, response_ids: Sequence[int]) -> EncodedSample:
    """`sample` with its answer cut to start at the RESPONSE tag (`response_ids`); unchanged without the tag."""
    ids, width = sample.input_ids, len(response_ids)
    for start in range(sample.prompt_tokens, len(ids) - width + 1):
        if ids[start:start + width] == list(response_ids):
            return EncodedSample(ids[: sample.prompt_tokens] + ids[start:], sample.prompt_tokens,
                                 sample.input_features, sample.feature_attention_mask)
    return sample


def collate(samples: Sequence[EncodedSample], pad_id: int, padding_side: str = "right",
            zero_audio: bool = False) -> dict[str, "torch.Tensor"]:
    """Pad a list of samples into model inputs plus `labels` (IGNORE_INDEX outside the answers).

    `zero_audio` sets every audio feature to zero: the control that shows what a model learns without hearing.
    A batch of text-only samples (the copy phase's) has no audio inputs.
    """
    import torch

    longest = max(sample.length_tokens for sample in samples)
    input_ids = torch.full((len(samples), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), longest), dtype=torch.long)
    labels = torch.full((len(samples), longest), IGNORE_INDEX, dtype=torch.long)
    for row, sample in enumerate(samples):
        start = 0 if padding_side == "right" else longest - sample.length_tokens
        end = start + sample.length_tokens
        input_ids[row, start:end] = torch.tensor(sample.input_ids)
        attention_mask[row, start:end] = 1
        labels[row, start + sample.prompt_tokens:end] = torch.tensor(sample.input_ids[sample.prompt_tokens:])
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    if all(sample.input_features is None for sample in samples):
        return batch
    features = np.stack([sample.input_features for sample in samples])
    return {
        **batch,
        "input_features": torch.from_numpy(np.zeros_like(features) if zero_audio else features),
        "feature_attention_mask": torch.from_numpy(np.stack([sample.feature_attention_mask for sample in samples])),
    }


class CopyBatches:
    """The copy phase's micro-batches: text only, a train row's user turn followed by the same text again.

    The loss covers the repeat, so a decoder trained from scratch first learns to copy from its context, which
    a multiple-choice check line does with its option's text; without audio and with short sequences these
    steps are cheap. The distinct user turns that list options among the split's first `max_rows` rows are
    drawn from; a batch is a function of (seed, step, micro-batch), so a resumed run draws the same ones.
    """

    def __init__(self, shards: Sequence[Path], tokenizer: Any, end_of_turn_id: int, batch_size: int, seed: int,
                 max_rows: int = 20_000) -> None:
        rows = list(iter_rows(shards, columns=["question", "options"], max_rows=max_rows))
        # The copy the chains ask for is of option lines; turns without options are used only when none have any.
        listed = [row for row in rows if row["options"]] or rows
        texts = {render_user_text(row["question"], row["options"] or []) for row in listed}
        self.token_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in sorted(texts)]
        self.end_of_turn_id = end_of_turn_id
        self.batch_size = batch_size
        self.seed = seed

    def batch(self, step: int, micro_batch: int = 0) -> list[EncodedSample]:
        rng = np.random.default_rng([self.seed, step, micro_batch, 2])
        chosen = [self.token_ids[int(i)] for i in rng.integers(len(self.token_ids), size=self.batch_size)]
        return [EncodedSample(ids + [self.end_of_turn_id] + ids + [self.end_of_turn_id], len(ids) + 1, None, None)
                for ids in chosen]


class ChainBatches:
    """Text-only micro-batches of the train split's own samples: the chat prompt without its audio, then the
    assistant text, the loss on all of it.

    Every token after the heard sound's name follows from the text before it (the check lines copy the user
    turn, the verdicts compare names already written), so these steps teach the chains' copies and comparisons
    before the audio steps teach which sound is heard. Batches are a function of (seed, step, micro-batch).
    `encode_text(user_text, assistant_text)` is `SampleEncoder.encode_text`: None for a sample too long.
    """

    def __init__(self, shards: Sequence[Path], encode_text: Callable[[str, str], EncodedSample | None],
                 batch_size: int, seed: int, question_types: Sequence[str] | None = None,
                 max_rows: int = 20_000) -> None:
        # (token ids as int32, prompt length): a compact array, not Python ints, for tens of thousands of rows
        self.samples: list[tuple[np.ndarray, int]] = []
        columns = ["question", "options", "assistant_text", "question_type"]
        for row in iter_rows(shards, columns=columns, max_rows=max_rows):
            if question_types is not None and row["question_type"] not in question_types:
                continue  # the question types the run trains on (data.question_types), as in the audio steps
            sample = encode_text(render_user_text(row["question"], row["options"] or []), row["assistant_text"])
            if sample is not None:
                self.samples.append((np.asarray(sample.input_ids, dtype=np.int32), sample.prompt_tokens))
        if not self.samples:
            raise ValueError(f"no train sample of {shards[0].parent} fits data.max_tokens as text; "
                             "raise data.max_tokens or set train.chain_steps to 0")
        self.batch_size = batch_size
        self.seed = seed

    def batch(self, step: int, micro_batch: int = 0) -> list[EncodedSample]:
        rng = np.random.default_rng([self.seed, step, micro_batch, 3])
        chosen = [self.samples[int(i)] for i in rng.integers(len(self.samples), size=self.batch_size)]
        return [EncodedSample(ids.tolist(), prompt_tokens, None, None) for ids, prompt_tokens in chosen]


@dataclass
class DataPosition:
    """Where the next micro-batch comes from: the epoch, the pool within it, the batch within the pool."""

    epoch: int = 0
    pool: int = 0
    batch: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> "DataPosition":
        return cls(**data)


@dataclass
class StreamCounts:
    rows_read: int = 0
    rows_skipped_too_long: int = 0
    rows_skipped_type: int = 0


class BucketedBatches:
    """An endless stream of length-bucketed micro-batches from one split's shards.

    `encode_row(row, rng)` returns an EncodedSample or None (skipped); `rng` is None when augmentation is off.
    With several processes each takes every `world_size`-th batch of a pool, so they stay in step.
    """

    def __init__(self, shards: Sequence[Path], encode_row: Callable[[dict[str, Any], np.random.Generator | None],
                 EncodedSample | None], batch_size: int, pool_rows: int, seed: int, augment: bool = False,
                 rank: int = 0, world_size: int = 1) -> None:
        self.shards = list(shards)
        self.encode_row = encode_row
        self.batch_size = batch_size
        self.pool_rows = pool_rows
        self.seed = seed
        self.augment = augment
        self.rank = rank
        self.world_size = world_size
        # The unit of order is a Parquet row group: each epoch reads them in a seeded order, so pools mix
        # rows from all over the split even when a shard keeps its rows grouped (by class, say).
        self.row_groups = [(shard, group, metadata.row_group(group).num_rows)
                           for shard, metadata in enumerate(pq.ParquetFile(path).metadata for path in self.shards)
                           for group in range(metadata.num_row_groups)]
        self.total_rows = sum(rows for _, _, rows in self.row_groups)
        if self.total_rows == 0:
            raise ValueError(f"the shards {self.shards[:2]}... hold no rows; publish a non-empty train split")
        self.pools_per_epoch = -(-self.total_rows // pool_rows)
        self.position = DataPosition()
        self.counts = StreamCounts()
        self._cached: tuple[int, int, list[list[EncodedSample]]] | None = None

    def _read_pool_rows(self, epoch: int, pool: int) -> list[tuple[int, dict[str, Any]]]:
        """(row number in the epoch's stream, row) for the pool's rows, reading only the row groups it spans."""
        start = pool * self.pool_rows
        stop = min(start + self.pool_rows, self.total_rows)
        rows: list[tuple[int, dict[str, Any]]] = []
        offset = 0
        for index in np.random.default_rng([self.seed, epoch]).permutation(len(self.row_groups)):
            shard, group, count = self.row_groups[int(index)]
            first, last = max(start - offset, 0), min(stop - offset, count)
            if first < last:
                table = pq.ParquetFile(self.shards[shard]).read_row_group(group, columns=TRAIN_COLUMNS)
                chosen = table.slice(first, last - first).to_pylist()
                rows.extend((offset + first + i, row) for i, row in enumerate(chosen))
            offset += count
            if offset >= stop:
                break
        return rows

    def _pool_batches(self, epoch: int, pool: int) -> list[list[EncodedSample]]:
        if self._cached is not None and self._cached[:2] == (epoch, pool):
            return self._cached[2]
        encoded: list[EncodedSample] = []
        for row_number, row in self._read_pool_rows(epoch, pool):
            self.counts.rows_read += 1
            rng = np.random.default_rng([self.seed, epoch, row_number]) if self.augment else None
            sample = self.encode_row(row, rng)
            if sample is not None:
                encoded.append(sample)
        rng = np.random.default_rng([self.seed, epoch, pool, 1])
        shuffled = [encoded[i] for i in rng.permutation(len(encoded))]
        shuffled.sort(key=lambda sample: sample.length_tokens // BUCKET_WIDTH_TOKENS)  # stable: ties stay shuffled
        batches = [shuffled[i:i + self.batch_size] for i in range(0, len(shuffled), self.batch_size)]
        batches = [batches[i] for i in rng.permutation(len(batches))]
        usable = len(batches) - len(batches) % self.world_size
        mine = batches[:usable][self.rank::self.world_size]
        self._cached = (epoch, pool, mine)
        return mine

    def next_batch(self) -> list[EncodedSample]:
        """The micro-batch at `position`, then move `position` past it."""
        for _ in range(self.pools_per_epoch + 1):
            batches = self._pool_batches(self.position.epoch, self.position.pool)
            if self.position.batch < len(batches):
                batch = batches[self.position.batch]
                self.position.batch += 1
                return batch
            self.position.batch = 0
            self.position.pool += 1
            if self.position.pool >= self.pools_per_epoch:
                self.position.pool = 0
                self.position.epoch += 1
        raise ValueError(
            "a whole epoch gave no batch: every sample was skipped (too long for data.max_tokens, or filtered "
            "by data.question_types), or too few samples for the number of processes"
        )
