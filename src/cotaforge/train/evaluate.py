"""Evaluate a model on a published cotaforge dataset or an MMAU-style JSON benchmark, and measure listening.

Each question is answered by greedy generation; the final answer is read by `parsing.parse_answer`
(rules in its docstring) and scored against the reference. Results are grouped by split, question type
and class, beside chance, with the share of outputs whose CoT format is compliant.

The listening measure: every question is asked twice, once with its clip's audio and once with the audio
of a partner clip whose answer to the same question differs (seeded pairing, same split, source dataset and
target; see `pair_items`), both scored against the question's own answer. `accuracy` minus
`accuracy_swapped_audio` is the `listening_gap`: a model that ignores the audio answers the same either way
(gap 0); one that listens loses its right answers under the partner's audio.

With `scoring="options"`, multiple-choice and yes/no questions are decided by log-likelihood instead of by
the generated answer. The text scored is the model's own output, generated under the same audio it is scored
with, rewritten once per option (letter and option text exchanged after PLANNING, or yes and no exchanged);
the most likely rewrite wins. No reference text enters, so the clip's measured facts that a published answer
states cannot decide the option: whatever the candidates know about the clip, the model heard.

The answer-token loss is the cross-entropy of the reference RESPONSE's answer value (the letter and the
option's text, yes/no, or the short answer) after the model's own THINK (generated under the same audio),
with own and swapped audio. It needs a reference answer, so a benchmark file has none.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pyarrow.parquet as pq

from cotaforge.train.data import (
    IGNORE_INDEX,
    LETTERS,
    EncodedSample,
    SampleEncoder,
    collate,
    decode_wav,
    iter_rows,
    render_user_text,
    split_shards,
)
from cotaforge.train.loss import answer_loss_terms
from cotaforge.train.parsing import check_format, is_correct, is_letter_mention, parse_answer

logger = logging.getLogger(__name__)

EVAL_COLUMNS = ["sample_id", "clip_id", "audio", "question", "options", "question_type", "answer", "class_label",
                "target", "target_value", "asked_value", "split", "source_dataset", "assistant_text"]
Scoring = Literal["generate", "options"]
OPTION_SCORED_TYPES = ("multiple_choice", "yes_no")
_THINK_END = re.compile(r"</THINK>", re.IGNORECASE)
_RESPONSE_BLOCK = re.compile(r"<RESPONSE>.*?(?:</RESPONSE>|$)", re.IGNORECASE | re.DOTALL)
_YES_OR_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


@dataclass
class EvalItem:
    """One question: audio, text, reference answer (a letter for multiple choice) and grouping keys.

    `target_value` is what the answer was fixed from (the clip's class, say) and `asked_value` the value a
    yes/no question proposes; the partner clip of the listening measure is chosen with them.
    """

    item_id: str
    samples: np.ndarray
    question: str
    options: list[str]
    question_type: str
    answer: str
    class_label: str
    split: str
    target: str = "class"
    source: str = "-"
    reference: str = ""
    target_value: str = ""
    asked_value: str = ""
    clip_id: str = ""

    def __post_init__(self) -> None:
        if not self.target_value:
            self.target_value = self.class_label
        if not self.clip_id:
            self.clip_id = hashlib.sha256(np.ascontiguousarray(self.samples).tobytes()).hexdigest()[:16]


@dataclass
class ItemResult:
    item_id: str
    split: str
    source: str
    question_type: str
    class_label: str
    target: str
    answer: str
    prediction: str | None
    rule: str
    correct: bool
    format_ok: bool
    chance: float | None
    output: str
    swapped_clip: str | None = None
    prediction_swapped_audio: str | None = None
    correct_swapped_audio: bool | None = None
    output_swapped_audio: str | None = None
    answer_loss: float | None = None
    answer_loss_swapped_audio: float | None = None


@dataclass
class GroupScore:
    group: str
    value: str
    n: int
    accuracy: float
    chance: float | None
    format_compliance: float
    unparsed: int
    n_swapped: int = 0
    accuracy_swapped_audio: float | None = None
    listening_gap: float | None = None
    answer_loss: float | None = None
    answer_loss_swapped_audio: float | None = None


@dataclass
class EvalReport:
    model: str
    data: str
    scoring: str
    seconds: float
    seed: int = 0
    rows: list[GroupScore] = field(default_factory=list)
    items: list[ItemResult] = field(default_factory=list)

    def to_markdown(self) -> str:
        """The evaluation table, one row per (group, value): accuracy with own and swapped audio, beside chance."""
        def pct(value: float | None) -> str:
            return "-" if value is None else f"{value:.1%}"

        def nats(value: float | None) -> str:
            return "-" if value is None else f"{value:.3f}"

        lines = [f"Model `{self.model}` on `{self.data}` (scoring: {self.scoring}, {len(self.items)} questions, "
                 f"swap seed {self.seed}, {self.seconds:.0f} s).", "",
                 "| group | value | n | accuracy | swapped audio | listening gap | chance | answer loss | "
                 "answer loss, swapped | format ok | unparsed |",
                 "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for row in self.rows:
            gap = "-" if row.listening_gap is None else f"{100 * row.listening_gap:+.1f} pt"
            lines.append(f"| {row.group} | {row.value} | {row.n} | {row.accuracy:.1%} | "
                         f"{pct(row.accuracy_swapped_audio)} | {gap} | {pct(row.chance)} | {nats(row.answer_loss)} | "
                         f"{nats(row.answer_loss_swapped_audio)} | {row.format_compliance:.1%} | {row.unparsed} |")
        lines += ["", "Swapped audio: each question asked again with the audio of a clip whose answer differs "
                      "(same split, source and target); listening gap = accuracy - swapped-audio accuracy on the "
                      "questions that have a partner (n swapped). Answer loss: nats per token of the reference "
                      "answer value after the model's own reasoning."]
        return "\n".join(lines) + "\n"


def _chance(question_type: str, options: Sequence[str]) -> float | None:
    if question_type == "multiple_choice" and options:
        return 1 / len(options)
    return 0.5 if question_type == "yes_no" else None


def _available_columns(path: Path, wanted: Sequence[str]) -> list[str]:
    names = set(pq.ParquetFile(path).schema_arrow.names)
    missing = [name for name in ("audio", "question", "question_type", "answer") if name not in names]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}: evaluate a dataset published by cotaforge")
    return [name for name in wanted if name in names]


def dataset_items(dataset_dir: Path, splits: Sequence[str], max_rows: int | None = None,
                  question_types: Sequence[str] | None = None) -> Iterator[EvalItem]:
    """Questions from a published dataset's splits (at most `max_rows` per split, of `question_types`)."""
    for split in splits:
        shards = split_shards(dataset_dir, split)
        rows = (row for row in iter_rows(shards, _available_columns(shards[0], EVAL_COLUMNS))
                if question_types is None or row["question_type"] in question_types)
        for count, row in enumerate(rows):
            if max_rows is not None and count >= max_rows:
                break
            yield EvalItem(str(row.get("sample_id") or f"{split}-{count}"), decode_wav(row["audio"]["bytes"]),
                           row["question"], row.get("options") or [], row["question_type"], row["answer"],
                           row.get("class_label") or "-", row.get("split") or split, row.get("target") or "class",
                           row.get("source_dataset") or "-", row.get("assistant_text") or "",
                           row.get("target_value") or "", row.get("asked_value") or "", row.get("clip_id") or "")


def mmau_items(path: Path, max_rows: int | None = None) -> Iterator[EvalItem]:
    """Questions from an MMAU-style JSON list: question, choices, answer (choice text or letter), audio path.

    The audio key may be `audio_id`, `audio_path` or `audio` (relative to the JSON file's folder); the class
    is `category`, else `task`; the split is `split`, else "benchmark".
    """
    from cotaforge.audio import decode_audio

    records = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(records, list):
        raise ValueError(f"{path} must hold a JSON list of questions (MMAU format)")
    for index, record in enumerate(records[:max_rows]):
        audio_key = next((key for key in ("audio_id", "audio_path", "audio") if record.get(key)), None)
        if audio_key is None or "question" not in record or "choices" not in record or "answer" not in record:
            raise ValueError(f"{path} item {index} needs question, choices, answer and audio_id (or audio_path)")
        choices = [str(choice) for choice in record["choices"]]
        answer = str(record["answer"]).strip()
        if answer in choices:
            letter = LETTERS[choices.index(answer)]
        elif len(answer) == 1 and answer.upper() in LETTERS[: len(choices)]:
            letter = answer.upper()
        else:
            raise ValueError(f"{path} item {index}: answer {answer!r} is neither a choice nor a choice letter")
        audio_path = Path(record[audio_key])
        audio_path = audio_path if audio_path.is_absolute() else path.parent / audio_path
        yield EvalItem(str(record.get("id", index)), decode_audio(audio_path).samples, record["question"], choices,
                       "multiple_choice", letter, str(record.get("category") or record.get("task") or "-"),
                       str(record.get("split") or "benchmark"), "class", path.stem,
                       target_value=choices[LETTERS.index(letter)], clip_id=str(record[audio_key]))


def load_items(data: str, splits: Sequence[str], max_rows: int | None = None,
               question_types: Sequence[str] | None = None) -> Iterator[EvalItem]:
    """Items from a published dataset folder or an MMAU-style JSON file (all multiple choice)."""
    path = Path(data)
    if path.is_file() and path.suffix == ".json":
        return mmau_items(path, max_rows)
    if path.is_dir():
        return dataset_items(path, splits, max_rows, question_types)
    raise ValueError(f"{data} is neither a published dataset folder nor an MMAU-style .json file")


def _same(a: str, b: str) -> bool:
    return a.strip().lower() == b.strip().lower()


def _changes_answer(item: EvalItem, partner: EvalItem) -> bool:
    """Whether `partner`'s clip answers `item`'s question differently (what the swapped audio must do)."""
    if _same(partner.target_value, item.target_value):
        return False
    if item.question_type == "yes_no" and item.answer.strip().lower() == "no" and item.asked_value \
            and not item.target.startswith("scene."):
        # "Is it X?" with answer no flips only under a clip that is X; other clips keep the answer.
        return _same(partner.target_value, item.asked_value)
    return True


def _prefers(item: EvalItem, partner: EvalItem) -> bool:
    """A multiple-choice partner whose value is another option makes a different option correct."""
    return item.question_type != "multiple_choice" or any(_same(partner.target_value, o) for o in item.options)


def _pool_key(item: EvalItem) -> tuple[str, str, str, str]:
    """Items whose target values answer one question: a scene question's value answers only the question
    with the same classes asked about ("how many times is X heard"), so those are pooled by them too."""
    asked = item.asked_value if item.target.startswith("scene.") else ""
    return item.split, item.source, item.target, asked


def pair_items(items: Sequence[EvalItem], seed: int = 0) -> list[int | None]:
    """For each item, the index of its partner clip's item, or None where no clip qualifies.

    The partner is in the same split, source dataset and target (what the question asks about; for a scene
    question also the classes it asks about), is another clip, and answers the item's question differently: another class for a class question; for yes/no with
    answer "no", a clip of the asked class. Multiple choice prefers a clip whose class is one of the options.
    Among those, one is drawn with a generator seeded by (seed, item id), so the pairing does not depend on
    the order or number of the other items evaluated.
    """
    by_pool: dict[tuple[str, str, str, str], list[int]] = defaultdict(list)
    first_of_clip: dict[tuple[str, ...], int] = {}
    for index, item in enumerate(items):
        key = _pool_key(item)
        if (*key, item.clip_id) not in first_of_clip:  # one candidate per clip, whatever its question count
            first_of_clip[(*key, item.clip_id)] = index
            by_pool[key].append(index)
    partners: list[int | None] = []
    for item in items:
        pool = by_pool[_pool_key(item)]
        candidates = [i for i in pool if items[i].clip_id != item.clip_id and _changes_answer(item, items[i])]
        preferred = [i for i in candidates if _prefers(item, items[i])]
        candidates = sorted(preferred or candidates, key=lambda i: items[i].clip_id)
        if not candidates:
            partners.append(None)
            continue
        item_key = int(hashlib.sha256(item.item_id.encode()).hexdigest()[:8], 16)
        partners.append(candidates[int(np.random.default_rng([seed, item_key]).integers(len(candidates)))])
    return partners


def swap_options(text: str, options: Sequence[str], chosen: int, candidate: int) -> str:
    """Exchange options `chosen` and `candidate` (letters and texts) after the PLANNING stage of `text`."""
    if chosen == candidate:
        return text
    head, tail = _split_after_planning(text)
    letters = LETTERS[: len(options)]
    texts = sorted({options[chosen], options[candidate]}, key=len, reverse=True)
    pattern = re.compile(r"(?<![\w'])(?P<text>(?i:" + "|".join(re.escape(t) for t in texts) + r"))(?![\w'])"
                         r"|(?<![A-Za-z0-9'])(?P<letter>[A-Z])(?![A-Za-z0-9'])")
    swap_text = {options[chosen].lower(): options[candidate], options[candidate].lower(): options[chosen]}
    swap_letter = {letters[chosen]: letters[candidate], letters[candidate]: letters[chosen]}

    def replace(match: re.Match[str]) -> str:
        if match.group("text"):
            found, new = match.group("text"), swap_text[match.group("text").lower()]
            return new[:1].upper() + new[1:] if found[:1].isupper() else new
        letter = match.group("letter")
        if letter in swap_letter and is_letter_mention(letter, tail[match.end():], letters):
            return swap_letter[letter]
        return letter

    return head + pattern.sub(replace, tail)


def swap_yes_no(text: str) -> str:
    """Exchange the words yes and no (keeping their case) after the PLANNING stage of `text`."""
    head, tail = _split_after_planning(text)

    def replace(match: re.Match[str]) -> str:
        found = match.group(1)
        new = "no" if found.lower() == "yes" else "yes"
        return new.upper() if found.isupper() and len(found) > 1 else new.capitalize() if found[0].isupper() else new

    return head + _YES_OR_NO.sub(replace, tail)


def _split_after_planning(text: str) -> tuple[str, str]:
    end_of_plan = text.upper().find("</PLANNING>")
    split_at = end_of_plan + len("</PLANNING>") if end_of_plan >= 0 else 0
    return text[:split_at], text[split_at:]


def think_part(output: str) -> str:
    """The output up to and including its last `</THINK>`; without one, the output less any RESPONSE block."""
    ends = list(_THINK_END.finditer(output))
    if ends:
        return output[: ends[-1].end()]
    return _RESPONSE_BLOCK.sub("", output).rstrip()


def response_block(reference: str) -> str | None:
    """The reference's `<RESPONSE>...</RESPONSE>` block, or None."""
    match = _RESPONSE_BLOCK.search(reference)
    return match.group(0) if match else None


def answer_value_spans(response: str, item: EvalItem) -> list[tuple[int, int]]:
    """Character spans of the answer value in a RESPONSE block: for multiple choice the last mention of the
    answer letter and every mention of its option's text; for yes/no the first yes or no; otherwise every
    mention of the answer (whole words, any case)."""
    spans: list[tuple[int, int]] = []
    if item.question_type == "multiple_choice" and item.options:
        letters = LETTERS[: len(item.options)]
        mentions = [m for m in re.finditer(rf"(?<![A-Za-z0-9']){re.escape(item.answer)}(?![A-Za-z0-9'])", response)
                    if is_letter_mention(m.group(0), response[m.end():], letters)]
        spans += [mentions[-1].span()] if mentions else []
        words = [item.options[LETTERS.index(item.answer)]] if item.answer in letters else []
    elif item.question_type == "yes_no":
        match = _YES_OR_NO.search(response)
        return [match.span(1)] if match else []
    else:
        words = [item.answer]
    for word in words:
        spans += [m.span() for m in re.finditer(rf"(?<![\w']){re.escape(word)}(?![\w'])", response, re.IGNORECASE)]
    return sorted(spans)


class Scorer(Protocol):
    """What the evaluation asks of a model: greedy answers, and log-likelihoods of continuations."""

    def generate(self, items: Sequence[EvalItem]) -> list[str]: ...

    def answer_log_likelihoods(self, item: EvalItem, answers: Sequence[str]) -> list[float]: ...

    def answer_value_loss(self, item: EvalItem, continuation: str, spans: Sequence[tuple[int, int]]) -> float | None:
        ...


class Evaluator:
    """Answers questions with a loaded model: greedy generation, and option scoring by log-likelihood."""

    def __init__(self, model: Any, processor: Any, max_new_tokens: int) -> None:
        self.model = model
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        # Prompts only: no answer length limit applies when encoding them.
        self.device = next(model.parameters()).device
        self.encoder = SampleEncoder(processor, max_tokens=10**9, feature_device=str(self.device))
        self.pad_id = processor.tokenizer.pad_token_id

    def _prompt(self, item: EvalItem) -> EncodedSample:
        encoded = self.encoder.encode_prompt(item.samples, render_user_text(item.question, item.options))
        ids = [int(token) for token in encoded["input_ids"][0]]
        return EncodedSample(ids, len(ids), encoded["input_features"][0], encoded["feature_attention_mask"][0])

    def generate(self, items: Sequence[EvalItem]) -> list[str]:
        """Greedy answers, decoded without special tokens."""
        import torch

        batch = collate([self._prompt(item) for item in items], self.pad_id, padding_side="left")
        batch.pop("labels")
        batch = {key: value.to(self.device) for key, value in batch.items()}
        with torch.no_grad():
            output = self.model.generate(**batch, max_new_tokens=self.max_new_tokens, do_sample=False,
                                         eos_token_id=self.encoder.end_of_turn_id, pad_token_id=self.pad_id)
        new_tokens = output[:, batch["input_ids"].shape[1]:]
        return [text.strip() for text in self.processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def _loss_terms(self, batch: dict[str, Any]) -> tuple[Any, Any]:
        """`answer_loss_terms` of a collated batch whose `labels` mark the tokens to score."""
        import torch

        labels = batch.pop("labels").to(self.device)
        with torch.no_grad():
            logits = self.model(**{key: value.to(self.device) for key, value in batch.items()}).logits
        return answer_loss_terms(logits, labels)

    def answer_log_likelihoods(self, item: EvalItem, answers: Sequence[str]) -> list[float]:
        """Summed log-probability of each candidate answer (with its end-of-turn token) after the prompt."""
        prompt = self._prompt(item)
        tokenizer = self.processor.tokenizer
        samples = [EncodedSample(prompt.input_ids + tokenizer(answer, add_special_tokens=False)["input_ids"]
                                 + [self.encoder.end_of_turn_id], prompt.prompt_tokens, prompt.input_features,
                                 prompt.feature_attention_mask) for answer in answers]
        sums, _ = self._loss_terms(collate(samples, self.pad_id))
        return [-float(value) for value in sums]

    def answer_value_loss(self, item: EvalItem, continuation: str, spans: Sequence[tuple[int, int]]) -> float | None:
        """Mean cross-entropy (nats per token) of the tokens of `continuation` that overlap `spans`; None if none."""
        import torch

        prompt = self._prompt(item)
        encoded = self.processor.tokenizer(continuation, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(encoded["input_ids"])
        chosen = [index for index, (start, end) in enumerate(encoded["offset_mapping"])
                  if any(start < span_end and end > span_start for span_start, span_end in spans)]
        if not chosen:
            return None
        batch = collate([EncodedSample(prompt.input_ids + ids, prompt.prompt_tokens, prompt.input_features,
                                       prompt.feature_attention_mask)], self.pad_id)
        labels = torch.full_like(batch["labels"], IGNORE_INDEX)
        for index in chosen:
            labels[0, prompt.prompt_tokens + index] = ids[index]
        batch["labels"] = labels
        sums, counts = self._loss_terms(batch)
        return float(sums[0] / counts[0])


def option_candidates(item: EvalItem, output: str) -> list[str]:
    """The texts option scoring compares: `output` rewritten once per option (see the module docstring).

    When the output names no answer, its THINK part is kept and a bare response per option is appended.
    """
    parsed = parse_answer(output, item.question_type, item.options)
    if item.question_type == "multiple_choice":
        if parsed.value is not None:
            chosen = LETTERS.index(parsed.value)
            return [swap_options(output, item.options, chosen, index) for index in range(len(item.options))]
        return [f"{think_part(output)}\n<RESPONSE>\nThe answer is {letter}\n</RESPONSE>"
                for letter in LETTERS[: len(item.options)]]
    if parsed.value is not None:
        swapped = swap_yes_no(output)
        return [output, swapped] if parsed.value == "yes" else [swapped, output]
    return [f"{think_part(output)}\n<RESPONSE>\n{word}\n</RESPONSE>" for word in ("Yes.", "No.")]


def score_output(scorer: Scorer, item: EvalItem, output: str, scoring: Scoring) -> tuple[str | None, str]:
    """The prediction for `item` from `output` (generated under `item`'s audio): parsed, or by option scoring."""
    if scoring == "options" and item.question_type in OPTION_SCORED_TYPES and (
            item.options or item.question_type == "yes_no"):
        candidates = option_candidates(item, output)
        best = int(np.argmax(scorer.answer_log_likelihoods(item, candidates)))
        value = LETTERS[best] if item.question_type == "multiple_choice" else ("yes", "no")[best]
        return value, "option_likelihood"
    parsed = parse_answer(output, item.question_type, item.options)
    return parsed.value, parsed.rule


def answer_loss(scorer: Scorer, item: EvalItem, output: str) -> float | None:
    """The answer-token loss of `item` after `output`'s THINK part (generated under `item`'s audio)."""
    response = response_block(item.reference)
    if response is None:
        return None
    think = think_part(output)
    continuation = f"{think}\n{response}" if think else response
    offset = len(continuation) - len(response)
    spans = [(start + offset, end + offset) for start, end in answer_value_spans(response, item)]
    return scorer.answer_value_loss(item, continuation, spans) if spans else None


def evaluate_items(scorer: Scorer, items: Sequence[EvalItem], scoring: Scoring = "generate", batch_size: int = 8,
                   seed: int = 0, swap_audio: bool = True) -> list[ItemResult]:
    """Answer every item with its own audio and (when `swap_audio`) with its partner's; score both."""
    from dataclasses import replace

    if scoring not in ("generate", "options"):
        raise ValueError(f"scoring {scoring!r}: use 'generate' or 'options'")
    partners = pair_items(items, seed) if swap_audio else [None] * len(items)
    results: list[ItemResult] = []
    started = time.perf_counter()
    for first in range(0, len(items), batch_size):
        batch = list(items[first:first + batch_size])
        batch_partners = partners[first:first + batch_size]
        outputs = scorer.generate(batch)
        swapped = [replace(item, samples=items[p].samples, clip_id=items[p].clip_id)
                   for item, p in zip(batch, batch_partners) if p is not None]
        swapped_outputs = iter(scorer.generate(swapped) if swapped else [])
        swapped_items = iter(swapped)
        for item, output, partner in zip(batch, outputs, batch_partners):
            prediction, rule = score_output(scorer, item, output, scoring)
            result = ItemResult(item.item_id, item.split, item.source, item.question_type, item.class_label,
                                item.target, item.answer, prediction, rule,
                                is_correct(prediction, item.question_type, item.answer),
                                check_format(output).compliant, _chance(item.question_type, item.options), output,
                                answer_loss=answer_loss(scorer, item, output))
            if partner is not None:
                other, other_output = next(swapped_items), next(swapped_outputs)
                other_prediction, _ = score_output(scorer, other, other_output, scoring)
                result.swapped_clip = other.clip_id
                result.prediction_swapped_audio = other_prediction
                result.correct_swapped_audio = is_correct(other_prediction, item.question_type, item.answer)
                result.output_swapped_audio = other_output
                result.answer_loss_swapped_audio = answer_loss(scorer, other, other_output)
            results.append(result)
        logger.info("evaluated %d of %d questions (%.0f s)", len(results), len(items), time.perf_counter() - started)
    return results


def _mean(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return float(np.mean(present)) if present else None


def _group_rows(items: Sequence[ItemResult]) -> list[GroupScore]:
    groups: dict[tuple[str, str], list[ItemResult]] = defaultdict(list)
    for item in items:
        groups[("all", "all")].append(item)
        groups[("split", item.split)].append(item)
        groups[("split/type", f"{item.split}/{item.question_type}")].append(item)
        groups[("split/source/type/target", f"{item.split}/{item.source}/{item.question_type}/{item.target}")].append(
            item)
        groups[("split/type/class", f"{item.split}/{item.question_type}/{item.class_label}")].append(item)
    rows = []
    for (group, value), members in groups.items():
        chances = [m.chance for m in members]
        chance = float(np.mean(chances)) if all(c is not None for c in chances) else None
        paired = [m for m in members if m.correct_swapped_audio is not None]
        swapped = _mean([float(bool(m.correct_swapped_audio)) for m in paired])
        gap = _mean([float(m.correct) - float(bool(m.correct_swapped_audio)) for m in paired])
        # Both losses over the same questions, so the difference is the audio's alone.
        with_losses = [m for m in members if m.answer_loss is not None and m.answer_loss_swapped_audio is not None]
        rows.append(GroupScore(group, value, len(members), float(np.mean([m.correct for m in members])), chance,
                               float(np.mean([m.format_ok for m in members])),
                               sum(m.prediction is None for m in members), len(paired), swapped, gap,
                               _mean([m.answer_loss for m in with_losses]),
                               _mean([m.answer_loss_swapped_audio for m in with_losses])))
    order = {"all": 0, "split": 1, "split/type": 2, "split/source/type/target": 3, "split/type/class": 4}
    return sorted(rows, key=lambda row: (order[row.group], row.value))


def evaluate_model(model_ref: str, data: str, splits: Sequence[str] = ("test",), scoring: Scoring = "generate",
                   max_new_tokens: int = 512, batch_size: int = 8, max_rows: int | None = None,
                   question_types: Sequence[str] | None = None, out_dir: Path | None = None, model: Any = None,
                   processor: Any = None, seed: int = 0, swap_audio: bool = True) -> EvalReport:
    """Evaluate `model_ref` (a run's final/ folder or a Hub id) on `data`; write eval.md/json to `out_dir`.

    Pass `model` and `processor` to evaluate an already loaded model (`model_ref` then only names it).
    `seed` draws the swapped-audio partners; `swap_audio=False` skips the listening measure (half the time).
    Raises ValueError when `data` is neither kind of input or holds no questions for `splits`.
    """
    import torch

    from cotaforge.train.model import load_for_inference

    items = list(load_items(data, splits, max_rows, question_types))
    if not items:
        raise ValueError(f"no questions found in {data} for splits {list(splits)}")
    if model is None or processor is None:
        model, processor = load_for_inference(model_ref, "cuda" if torch.cuda.is_available() else "cpu")
    model.eval()
    started = time.perf_counter()
    results = evaluate_items(Evaluator(model, processor, max_new_tokens), items, scoring, batch_size, seed,
                             swap_audio)
    report = EvalReport(model_ref, data, scoring, time.perf_counter() - started, seed, _group_rows(results), results)
    if out_dir is not None:
        write_eval_report(report, out_dir)
    return report


def write_eval_report(report: EvalReport, out_dir: Path) -> None:
    """eval.md (the table), eval.json (the table as data) and predictions.jsonl (every answer)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.md").write_text(report.to_markdown(), encoding="utf-8")
    summary = {key: value for key, value in asdict(report).items() if key != "items"}
    (out_dir / "eval.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    with (out_dir / "predictions.jsonl").open("w", encoding="utf-8") as handle:
        for item in report.items:
            handle.write(json.dumps(asdict(item)) + "\n")
