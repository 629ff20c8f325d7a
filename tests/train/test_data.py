"""Streaming published shards into length-bucketed batches, deterministically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cotaforge.train.config import AugmentSection
from cotaforge.train.data import (
    BucketedBatches,
    ChainBatches,
    CopyBatches,
    EncodedSample,
    augment_waveform,
    iter_rows,
    render_user_text,
    split_shards,
)

from .factories import write_digit_dataset


@pytest.fixture(scope="module")
def sharded_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three train shards of 8 rows, so pools cross shard boundaries."""
    root = tmp_path_factory.mktemp("sharded") / "digits" / "v1"
    return write_digit_dataset(root, {"train": ["george"], "test": ["lucas"]}, digits=[0, 1, 2, 3], takes=[0, 1, 2],
                               question_types=("multiple_choice", "yes_no"), rows_per_shard=8)


def _fake_encode(row: dict, rng: np.random.Generator | None) -> EncodedSample:
    # Length from the text, identity from the question: enough to check order and coverage.
    ids = [len(row["question"])] * (len(row["assistant_text"]) // 20)
    return EncodedSample(ids, 1, np.zeros((1, 1)), np.zeros(1))


def _stream(dataset: Path, **kwargs: int) -> BucketedBatches:
    options = {"batch_size": 3, "pool_rows": 10, "seed": 0} | kwargs
    return BucketedBatches(split_shards(dataset, "train"), _fake_encode, **options)


def test_shards_come_from_the_manifest(sharded_dataset: Path) -> None:
    shards = split_shards(sharded_dataset, "train")
    assert [path.name for path in shards] == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    with pytest.raises(ValueError, match="no 'validation' shards"):
        split_shards(sharded_dataset, "validation")


def test_an_epoch_covers_every_row_once_in_length_buckets(sharded_dataset: Path) -> None:
    stream = _stream(sharded_dataset)
    assert stream.total_rows == 24 and stream.pools_per_epoch == 3
    batch_count = sum(len(stream._pool_batches(0, pool)) for pool in range(3))
    stream.counts.rows_read = 0
    batches = [stream.next_batch() for _ in range(batch_count)]
    assert stream.position.epoch == 0
    assert sum(len(batch) for batch in batches) == 24
    assert stream.counts.rows_read == 24
    for batch in batches:  # a batch holds samples from one length bucket or its neighbour
        lengths = [sample.length_tokens for sample in batch]
        assert max(lengths) - min(lengths) < 2 * 16


def test_a_position_resumes_the_same_batches(sharded_dataset: Path) -> None:
    first = _stream(sharded_dataset)
    expected = [first.next_batch() for _ in range(12)]  # crosses pools and an epoch
    second = _stream(sharded_dataset)
    for _ in range(5):
        second.next_batch()
    resumed = _stream(sharded_dataset)
    resumed.position = second.position
    for want in expected[5:]:
        got = resumed.next_batch()
        assert [s.input_ids for s in got] == [s.input_ids for s in want]


def test_epochs_differ_and_processes_split_batches(sharded_dataset: Path) -> None:
    stream = _stream(sharded_dataset, pool_rows=24)
    epoch_0 = [stream.next_batch() for _ in range(8)]
    epoch_1 = [stream.next_batch() for _ in range(8)]
    assert [len(b[0].input_ids) for b in epoch_0] != [len(b[0].input_ids) for b in epoch_1]
    ranks = [_stream(sharded_dataset, pool_rows=24, rank=rank, world_size=2) for rank in (0, 1)]
    firsts = [[s.input_ids for s in r.next_batch()] for r in ranks]
    assert firsts[0] != firsts[1]
    assert [[s.input_ids for s in epoch_0[i]] for i in (0, 1)] == firsts


def test_augmentation_is_a_function_of_its_rng() -> None:
    cfg = AugmentSection(speed_range=(0.9, 1.1), gain_db_range=(-6, 6), noise_snr_db_min=20, shift_max_s=0.1)
    samples = np.sin(np.linspace(0, 100, 8000)).astype(np.float32) * 0.5
    first = augment_waveform(samples, cfg, np.random.default_rng([0, 1, 2]))
    again = augment_waveform(samples, cfg, np.random.default_rng([0, 1, 2]))
    other = augment_waveform(samples, cfg, np.random.default_rng([0, 1, 3]))
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert first.dtype == np.float32 and np.abs(first).max() <= 1.0
    assert not AugmentSection().enabled and cfg.enabled


def test_collate_zeroes_audio_only_when_asked() -> None:
    pytest.importorskip("torch")
    from cotaforge.train.data import collate

    features = np.ones((4, 6), dtype=np.float32)
    samples = [EncodedSample([5, 6, 7], 1, features, np.ones(6, dtype=np.int64))]
    assert float(collate(samples, pad_id=0)["input_features"].abs().sum()) == 24.0
    zeroed = collate(samples, pad_id=0, zero_audio=True)
    assert float(zeroed["input_features"].abs().sum()) == 0.0
    assert zeroed["input_ids"].tolist() == [[5, 6, 7]] and zeroed["labels"].tolist() == [[-100, 6, 7]]


def test_response_only_drops_the_think_block_and_keeps_the_prompt() -> None:
    from cotaforge.train.data import response_only

    think, response, end = [50, 51, 52], [60, 61], [99]
    sample = EncodedSample([1, 2, 3] + think + [7, 8] + response + end, 3, np.zeros((1, 1)), np.zeros(1))
    cut = response_only(sample, [7, 8])
    assert cut.input_ids == [1, 2, 3, 7, 8, 60, 61, 99] and cut.prompt_tokens == 3
    assert response_only(sample, [42]) is sample  # no tag: unchanged


def _char_tokenizer(text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
    return {"input_ids": [ord(char) for char in text]}


def test_copy_batches_repeat_a_user_turn_with_options_with_the_loss_on_the_repeat(sharded_dataset: Path) -> None:
    pytest.importorskip("torch")
    from cotaforge.train.data import IGNORE_INDEX, collate

    shards = split_shards(sharded_dataset, "train")
    rows = list(iter_rows(shards))
    user_turns = {render_user_text(row["question"], row["options"]) for row in rows if row["options"]}
    assert any(not row["options"] for row in rows)  # the yes/no turns list no options and are left out
    copies = CopyBatches(shards, _char_tokenizer, end_of_turn_id=0, batch_size=5, seed=3)
    assert len(copies.token_ids) == len(user_turns) > 1  # each distinct user turn with options, once
    batch = copies.batch(step=7)
    assert len(batch) == 5
    for sample in batch:
        text_ids = sample.input_ids[: sample.prompt_tokens - 1]
        assert "".join(map(chr, text_ids)) in user_turns
        assert sample.input_ids == text_ids + [0] + text_ids + [0]
        assert sample.input_features is None

    # A function of (seed, step, micro-batch): a resumed run draws the same batches.
    again = CopyBatches(shards, _char_tokenizer, end_of_turn_id=0, batch_size=5, seed=3)
    assert [s.input_ids for s in again.batch(step=7)] == [s.input_ids for s in batch]
    drawn = {tuple(s.input_ids) for step in range(20) for micro in range(2) for s in copies.batch(step, micro)}
    assert len(drawn) == len(user_turns)

    collated = collate(batch, pad_id=0)
    assert "input_features" not in collated  # text only: the model runs without audio
    first = batch[0]
    labels = collated["labels"][0].tolist()
    assert labels[: first.prompt_tokens] == [IGNORE_INDEX] * first.prompt_tokens
    assert labels[first.prompt_tokens: first.length_tokens] == first.input_ids[first.prompt_tokens:]


def test_copy_batches_use_every_user_turn_when_none_lists_options(tmp_path: Path) -> None:
    root = write_digit_dataset(tmp_path / "digits" / "v1", {"train": ["george"]}, digits=[0, 1], takes=[0, 1],
                               question_types=("yes_no",), rows_per_shard=8)
    shards = split_shards(root, "train")
    user_turns = {render_user_text(row["question"], []) for row in iter_rows(shards)}
    copies = CopyBatches(shards, _char_tokenizer, end_of_turn_id=0, batch_size=2, seed=0)
    assert {"".join(map(chr, ids)) for ids in copies.token_ids} == user_turns


def _text_encoder(max_tokens: int = 10_000):
    """SampleEncoder.encode_text's contract over one token per character: '[user turn]' then the answer."""
    def encode_text(user_text: str, assistant_text: str) -> EncodedSample | None:
        prompt = [ord(char) for char in f"[{user_text}]"]
        ids = prompt + [ord(char) for char in assistant_text] + [0]
        return EncodedSample(ids, len(prompt), None, None) if len(ids) <= max_tokens else None
    return encode_text


def test_chain_batches_are_the_train_samples_without_audio_with_the_loss_on_the_assistant_text(
        sharded_dataset: Path) -> None:
    pytest.importorskip("torch")
    from cotaforge.train.data import IGNORE_INDEX, collate

    shards = split_shards(sharded_dataset, "train")
    rows = list(iter_rows(shards))
    chains = ChainBatches(shards, _text_encoder(), batch_size=4, seed=3)
    assert len(chains.samples) == len(rows)
    pairs = {(render_user_text(row["question"], row["options"] or []), row["assistant_text"]) for row in rows}
    batch = chains.batch(step=5)
    assert len(batch) == 4
    for sample in batch:
        prompt = "".join(map(chr, sample.input_ids[: sample.prompt_tokens]))
        answer = "".join(map(chr, sample.input_ids[sample.prompt_tokens: -1]))
        assert sample.input_ids[-1] == 0 and sample.input_features is None
        assert (prompt[1:-1], answer) in pairs  # a row's own user turn before its own answer

    # A function of (seed, step, micro-batch): a resumed run draws the same batches.
    again = ChainBatches(shards, _text_encoder(), batch_size=4, seed=3)
    assert [s.input_ids for s in again.batch(step=5)] == [s.input_ids for s in batch]
    assert [s.input_ids for s in chains.batch(step=6)] != [s.input_ids for s in batch]
    drawn = {tuple(s.input_ids) for step in range(30) for s in chains.batch(step)}
    assert len(drawn) == len({tuple(ids.tolist()) for ids, _ in chains.samples})

    collated = collate(batch, pad_id=0)
    assert "input_features" not in collated
    first = batch[0]
    labels = collated["labels"][0].tolist()
    assert labels[: first.prompt_tokens] == [IGNORE_INDEX] * first.prompt_tokens
    assert labels[first.prompt_tokens: first.length_tokens] == first.input_ids[first.prompt_tokens:]


def test_chain_batches_leave_out_samples_too_long_or_of_other_types_and_refuse_when_none_fit(
        sharded_dataset: Path) -> None:
    shards = split_shards(sharded_dataset, "train")
    every = ChainBatches(shards, _text_encoder(), batch_size=2, seed=0)
    lengths = sorted(len(ids) for ids, _ in every.samples)
    limit = lengths[len(lengths) // 2]
    some = ChainBatches(shards, _text_encoder(limit), batch_size=2, seed=0)
    assert len(some.samples) == sum(length <= limit for length in lengths) < len(lengths)
    yes_no = ChainBatches(shards, _text_encoder(), batch_size=2, seed=0, question_types=["yes_no"])
    rows = list(iter_rows(shards))
    assert len(yes_no.samples) == sum(row["question_type"] == "yes_no" for row in rows) < len(rows)
    with pytest.raises(ValueError, match="max_tokens"):
        ChainBatches(shards, _text_encoder(lengths[0] - 1), batch_size=2, seed=0)
