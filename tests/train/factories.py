"""Write small published datasets (Parquet shards in the publish layout) of spoken digits for the train tests.

The audio is real: the FSDD clips of examples/digits (CC BY-SA 4.0, see its README), decoded and resampled
to 16 kHz as ingest does. The CoT text is short but has the published shape: every stage present, rendered
by `cotaforge.cot`, the multiple-choice response ending with the letter. Splits are by speaker, like the demo.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cotaforge.audio import decode_audio, to_pcm16, wav_bytes
from cotaforge.cot import render_assistant_text
from cotaforge.models import SAMPLE_RATE_HZ, Sample, TeacherInfo
from cotaforge.train.config import FinetuneConfig
from cotaforge.train.data import LETTERS

FSDD_DIR = Path(__file__).resolve().parents[2] / "examples" / "digits"
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _wav_16k(path: Path) -> tuple[bytes, float]:
    pcm16 = to_pcm16(decode_audio(path).samples)
    return wav_bytes(pcm16), len(pcm16) / SAMPLE_RATE_HZ


def digit_samples(row: dict[str, str], rng: np.random.Generator, question_types: tuple[str, ...]) -> list[dict]:
    """Samples about one clip's spoken digit, in the published row shape (less audio and split)."""
    word = row["label"]
    accent = row["accent"].split("/")[-1]
    caption = f"A male speaker with a {accent} accent says a single English word: {word}."
    samples = []
    for question_type in question_types:
        options: list[str] = []
        asked = ""
        if question_type == "multiple_choice":
            others = [w for w in DIGIT_WORDS if w != word]
            options = [str(w) for w in rng.choice(others, size=3, replace=False)]
            options.insert(int(rng.integers(0, 4)), word)
            answer = LETTERS[options.index(word)]
            question = "Which digit is spoken in the recording?"
            planning = "I will listen to the word that is spoken and match it to one of the options."
            reasoning = f"The spoken word is {word}, which is option {answer}."
            summary = f"The speaker says {word}."
            response = f"The answer is {answer}"
        elif question_type == "yes_no":
            asked = word if rng.random() < 0.5 else str(rng.choice([w for w in DIGIT_WORDS if w != word]))
            answer = "yes" if asked == word else "no"
            question = f"Is the spoken digit {asked}?"
            planning = "I will identify the spoken word and compare it with the digit in the question."
            reasoning = f"The spoken word is {word}; the question asks about {asked}."
            summary = f"The speaker says {word}, so the answer is {answer}."
            response = answer.capitalize()
        else:
            answer = word
            question = "What digit does the speaker say?"
            planning = "I will identify the spoken word."
            reasoning = f"The speaker clearly pronounces {word}."
            summary = f"The digit is {word}."
            response = word
        sample_id = hashlib.sha256(f"{row['path']}:{question_type}".encode()).hexdigest()[:16]
        sample = Sample(
            sample_id=sample_id, clip_id=hashlib.sha256(row["path"].encode()).hexdigest()[:16],
            group_id=row["speaker"], source_dataset="fsdd-mini", source_path=row["path"],
            source_id=Path(row["path"]).stem, duration_s=0.0, labels=[word], class_label=word,
            metadata=json.dumps({"speaker": row["speaker"], "accent": row["accent"], "digit": row["digit"]}),
            question_type=question_type, prompt_style="concise", target="class", target_value=word,
            asked_value=asked, question=question, options=options, answer=answer, planning=planning,
            caption=caption, reasoning=reasoning, summary=summary, response=response,
            assistant_text=render_assistant_text({"planning": planning, "caption": caption, "reasoning": reasoning,
                                                  "summary": summary, "response": response}),
            teacher=TeacherInfo(backend="template", model="template", prompt_versions=["test.v1"]),
        )
        samples.append(sample.model_dump())
    return samples


def write_digit_dataset(dataset_dir: Path, splits: dict[str, list[str]], digits: list[int] | None = None,
                        takes: list[int] | None = None, question_types: tuple[str, ...] = ("multiple_choice",),
                        rows_per_shard: int = 1000, seed: int = 0) -> Path:
    """A published dataset at `dataset_dir`; `splits` maps split name to FSDD speakers."""
    rng = np.random.default_rng(seed)
    with (FSDD_DIR / "manifest.csv").open(newline="") as handle:
        manifest = list(csv.DictReader(handle))
    shards = []
    rows_by_split: dict[str, int] = {}
    (dataset_dir / "data").mkdir(parents=True, exist_ok=True)
    for split, speakers in splits.items():
        rows = []
        for row in manifest:
            take = int(Path(row["path"]).stem.split("_")[-1])
            if row["speaker"] not in speakers or (digits is not None and int(row["digit"]) not in digits):
                continue
            if takes is not None and take not in takes:
                continue
            audio_bytes, duration_s = _wav_16k(FSDD_DIR / row["path"])
            for sample in digit_samples(row, rng, question_types):
                sample.update(duration_s=duration_s, split=split,
                              audio={"bytes": audio_bytes, "path": Path(row["path"]).name})
                rows.append(sample)
        chunks = [rows[i:i + rows_per_shard] for i in range(0, len(rows), rows_per_shard)]
        for index, chunk in enumerate(chunks):
            name = f"data/{split}-{index:05d}-of-{len(chunks):05d}.parquet"
            pq.write_table(pa.Table.from_pylist(chunk), dataset_dir / name)
            data = (dataset_dir / name).read_bytes()
            shards.append({"path": name, "split": split, "rows": len(chunk), "bytes": len(data),
                           "sha256": hashlib.sha256(data).hexdigest()})
        rows_by_split[split] = len(rows)
    manifest_json = {"name": dataset_dir.parent.name, "version": dataset_dir.name, "schema_version": "1.0",
                     "fingerprint": "test", "created_at": "2025-01-01T00:00:00Z", "rows": rows_by_split,
                     "shards": shards}
    (dataset_dir / "manifest.json").write_text(json.dumps(manifest_json, indent=2), encoding="utf-8")
    (dataset_dir / "README.md").write_text("# digits (test dataset)\n", encoding="utf-8")
    return dataset_dir


def tiny_config(dataset_dir: Path, output_dir: Path, run_name: str = "tiny",
                **sections: dict[str, Any]) -> FinetuneConfig:
    """A tiny-model config that trains in seconds; `sections` update the defaults section by section."""
    data: dict[str, Any] = {
        "run_name": run_name,
        "output_dir": str(output_dir),
        "model": {"tiny": {"vocab_size": 400, "audio_layers": 1, "text_layers": 1, "audio_dim": 64,
                           "text_dim": 64, "audio_ffn_dim": 128, "text_ffn_dim": 128}},
        "data": {"dataset_dir": str(dataset_dir), "pool_rows": 16,
                 "augment": {"speed_range": [0.9, 1.1], "gain_db_range": [-6, 6], "noise_snr_db_min": 20}},
        "train": {"max_steps": 6, "batch_size": 4, "grad_accum_steps": 2, "learning_rate": 3e-3,
                  "checkpoint_every_steps": 2, "log_every_steps": 1, "num_threads": 1},
        "evaluate": {"max_new_tokens": 40, "batch_size": 8},
    }
    for section, values in sections.items():
        if isinstance(data.get(section), dict):
            data[section] = {**data[section], **values}
        else:
            data[section] = values
    return FinetuneConfig.model_validate(data)
