"""Evaluate a model on a published cotaforge dataset or an MMAU-style JSON benchmark.

Each question is answered by greedy generation; the final answer is read by `parsing.parse_answer`
(rules in its docstring) and scored against the reference. Results are grouped by split, question type
and class, beside chance, with the share of outputs whose CoT format is compliant.

With `scoring="options"`, multiple-choice questions are decided by log-likelihood instead of by the
generated letter. A published row carries a reference answer; for each option, the correct option is
exchanged with it (letter and text together, in every stage after PLANNING, which lists the options in
prompt order), and the option whose rewritten answer the model finds most likely wins. Every candidate is
the same text but for the option it names, so the model must tell them apart by the audio (and by the
measured facts the reference states). The table's "audio control" column repeats the scoring with
another question's audio: accuracy above it comes from listening, accuracy down to it from the text. A
benchmark question without a reference uses the model's own answer as the text to rewrite, which favours
the option it generated.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cotaforge.train.data import (
    LETTERS,
    EncodedSample,
    SampleEncoder,
    collate,
    decode_wav,
    iter_rows,
    render_user_text,
    split_shards,
)
from cotaforge.train.parsing import check_format, is_correct, is_letter_mention, parse_answer

logger = logging.getLogger(__name__)

EVAL_COLUMNS = ["sample_id", "audio", "question", "options", "question_type", "answer", "class_label", "target",
                "split", "source_dataset", "assistant_text"]
Scoring = Literal["generate", "options"]


@dataclass
class EvalItem:
    """One question: audio, text, reference answer (a letter for multiple choice) and grouping keys."""

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
    control_correct: bool | None = None


@dataclass
class GroupScore:
    group: str
    value: str
    n: int
    accuracy: float
    chance: float | None
    format_compliance: float
    unparsed: int
    audio_control: float | None = None


@dataclass
class EvalReport:
    model: str
    data: str
    scoring: str
    seconds: float
    rows: list[GroupScore] = field(default_factory=list)
    items: list[ItemResult] = field(default_factory=list)

    def to_markdown(self) -> str:
        """The evaluation table, one row per (group, value), accuracy beside chance."""
        lines = [f"Model `{self.model}` on `{self.data}` (scoring: {self.scoring}, {len(self.items)} questions, "
                 f"{self.seconds:.0f} s).", "",
                 "| group | value | n | accuracy | chance | audio control | format ok | unparsed |",
                 "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for row in self.rows:
            chance = "-" if row.chance is None else f"{row.chance:.1%}"
            control = "-" if row.audio_control is None else f"{row.audio_control:.1%}"
            lines.append(f"| {row.group} | {row.value} | {row.n} | {row.accuracy:.1%} | {chance} | {control} | "
                         f"{row.format_compliance:.1%} | {row.unparsed} |")
        return "\n".join(lines) + "\n"


def _chance(question_type: str, options: Sequence[str]) -> float | None:
    if question_type == "multiple_choice" and options:
        return 1 / len(options)
    return 0.5 if question_type == "yes_no" else None


def dataset_items(dataset_dir: Path, splits: Sequence[str], max_rows: int | None = None,
                  question_types: Sequence[str] | None = None) -> Iterator[EvalItem]:
    """Questions from a published dataset's splits (at most `max_rows` per split, of `question_types`)."""
    for split in splits:
        rows = (row for row in iter_rows(split_shards(dataset_dir, split), EVAL_COLUMNS)
                if question_types is None or row["question_type"] in question_types)
        for count, row in enumerate(rows):
            if max_rows is not None and count >= max_rows:
                break
            yield EvalItem(row["sample_id"], decode_wav(row["audio"]["bytes"]), row["question"], row["options"] or [],
                           row["question_type"], row["answer"], row["class_label"], row["split"] or split,
                           row["target"], row["source_dataset"], row["assistant_text"])


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
                       str(record.get("split") or "benchmark"), "class", path.stem)


def load_items(data: str, splits: Sequence[str], max_rows: int | None = None,
               question_types: Sequence[str] | None = None) -> Iterator[EvalItem]:
    """Items from a published dataset folder or an MMAU-style JSON file (all multiple choice)."""
    path = Path(data)
    if path.is_file() and path.suffix == ".json":
        return mmau_items(path, max_rows)
    if path.is_dir():
        return dataset_items(path, splits, max_rows, question_types)
    raise ValueError(f"{data} is neither a published dataset folder nor an MMAU-style .json file")


def swap_options(text: str, options: Sequence[str], chosen: int, candidate: int) -> str:
    """Exchange options `chosen` and `candidate` (letters and texts) after the PLANNING stage of `text`."""
    if chosen == candidate:
        return text
    end_of_plan = text.upper().find("</PLANNING>")
    split_at = end_of_plan + len("</PLANNING>") if end_of_plan >= 0 else 0
    head, tail = text[:split_at], text[split_at:]
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


class Evaluator:
    """Answers questions with a loaded model: greedy generation, and option scoring by log-likelihood."""

    def __init__(self, model: Any, processor: Any, max_new_tokens: int) -> None:
        self.model = model
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        # Prompts only: no answer length limit applies when encoding them.
        self.encoder = SampleEncoder(processor, max_tokens=10**9)
        self.pad_id = processor.tokenizer.pad_token_id
        self.device = next(model.parameters()).device

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

    def answer_log_likelihoods(self, item: EvalItem, answers: Sequence[str]) -> list[float]:
        """Summed log-probability of each candidate answer (with its end-of-turn token) after the prompt."""
        import torch

        from cotaforge.train.recipe import answer_loss_terms

        prompt = self._prompt(item)
        tokenizer = self.processor.tokenizer
        samples = [EncodedSample(prompt.input_ids + tokenizer(answer, add_special_tokens=False)["input_ids"]
                                 + [self.encoder.end_of_turn_id], prompt.prompt_tokens, prompt.input_features,
                                 prompt.feature_attention_mask) for answer in answers]
        batch = collate(samples, self.pad_id)
        labels = batch.pop("labels").to(self.device)
        with torch.no_grad():
            logits = self.model(**{key: value.to(self.device) for key, value in batch.items()}).logits
        sums, _ = answer_loss_terms(logits, labels)
        return [-float(value) for value in sums]

    def score_options(self, item: EvalItem, output: str) -> tuple[str | None, str]:
        """The option whose rewritten answer is most likely (see the module docstring)."""
        if item.reference:
            base, named = item.reference, item.answer
        else:
            parsed = parse_answer(output, item.question_type, item.options)
            if parsed.value is None:
                return None, parsed.rule
            base, named = output, parsed.value
        chosen = LETTERS.index(named)
        candidates = [swap_options(base, item.options, chosen, index) for index in range(len(item.options))]
        scores = self.answer_log_likelihoods(item, candidates)
        return LETTERS[int(np.argmax(scores))], "option_likelihood"


def _other_audio(items: Sequence[EvalItem], index: int) -> np.ndarray | None:
    """The audio of the next item in `items` (cyclically) whose clip differs from item `index`'s."""
    own = items[index].samples
    for step in range(1, len(items)):
        candidate = items[(index + step) % len(items)].samples
        if candidate.shape != own.shape or not np.array_equal(candidate, own):
            return candidate
    return None


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
        controls = [m.control_correct for m in members]
        control = float(np.mean(controls)) if all(c is not None for c in controls) else None
        rows.append(GroupScore(group, value, len(members), float(np.mean([m.correct for m in members])), chance,
                               float(np.mean([m.format_ok for m in members])),
                               sum(m.prediction is None for m in members), control))
    order = {"all": 0, "split": 1, "split/type": 2, "split/source/type/target": 3, "split/type/class": 4}
    return sorted(rows, key=lambda row: (order[row.group], row.value))


def evaluate_model(model_ref: str, data: str, splits: Sequence[str] = ("test",), scoring: Scoring = "generate",
                   max_new_tokens: int = 512, batch_size: int = 8, max_rows: int | None = None,
                   question_types: Sequence[str] | None = None, out_dir: Path | None = None, model: Any = None,
                   processor: Any = None) -> EvalReport:
    """Evaluate `model_ref` (a run's final/ folder or a Hub id) on `data`; write eval.md/json to `out_dir`.

    Pass `model` and `processor` to evaluate an already loaded model (`model_ref` then only names it).
    """
    import torch

    from cotaforge.train.model import load_for_inference

    if model is None or processor is None:
        model, processor = load_for_inference(model_ref, "cuda" if torch.cuda.is_available() else "cpu")
    model.eval()
    evaluator = Evaluator(model, processor, max_new_tokens)
    started = time.perf_counter()
    results: list[ItemResult] = []
    pending: list[EvalItem] = []

    def flush() -> None:
        for index, (item, output) in enumerate(zip(pending, evaluator.generate(pending))):
            parsed = parse_answer(output, item.question_type, item.options)
            prediction, rule = parsed.value, parsed.rule
            control = None
            if scoring == "options" and item.question_type == "multiple_choice":
                prediction, rule = evaluator.score_options(item, output)
                other = _other_audio(pending, index)
                if other is not None:
                    # The same scoring with another clip's audio: what is left is not listening.
                    control_prediction, _ = evaluator.score_options(replace(item, samples=other), output)
                    control = is_correct(control_prediction, item.question_type, item.answer)
            results.append(ItemResult(item.item_id, item.split, item.source, item.question_type, item.class_label,
                                      item.target, item.answer, prediction, rule,
                                      is_correct(prediction, item.question_type, item.answer),
                                      check_format(output).compliant, _chance(item.question_type, item.options),
                                      output, control))
        logger.info("evaluated %d questions (%.0f s)", len(results), time.perf_counter() - started)
        pending.clear()

    for item in load_items(data, splits, max_rows, question_types):
        pending.append(item)
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    if not results:
        raise ValueError(f"no questions found in {data} for splits {list(splits)}")
    report = EvalReport(model_ref, data, scoring, time.perf_counter() - started, _group_rows(results), results)
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
