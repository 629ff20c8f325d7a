"""Export a published dataset for other trainers: ms-swift's JSONL or LLaMA-Factory's sharegpt format.

Both carry the conversation exactly as `cotaforge finetune` trains on it (`train.data.build_messages`):
the system prompt, a user turn with the audio before the question and its lettered options, and the
assistant's tagged CoT text. Each clip's audio is written once, as the 16 kHz WAV the shards hold, to
`DIR/audio/<clip_id>.wav`, however many questions use it.

- `swift` (ms-swift's standard "messages" format, docs/source_en/Customization/Custom-dataset.md; read by
  ms-swift 4.6.0's `load_dataset`): one
  `DIR/<split>.jsonl` per split; each line `{"messages": [system, user, assistant], "audios": [path]}`,
  the user content holding one `<audio>` tag where the audio goes. ms-swift opens the paths as given, so
  they are absolute. Train with `swift sft --dataset DIR/train.jsonl --val_dataset DIR/validation.jsonl`.
- `llamafactory` (LLaMA-Factory's sharegpt format as its data/README.md "ShareGPT" section and
  data/mllm_audio_demo.json show it on the main branch): one `DIR/<split>.jsonl` per split; each line `{"messages": [user, assistant],
  "system": ..., "audios": [path]}` with role/content tags, paths relative to DIR (LLaMA-Factory's
  `media_dir` defaults to its `dataset_dir`), and `DIR/dataset_info.json` gets one entry per split,
  `<name>_<split>`, merged into any entries already there. Train with `dataset_dir: DIR` and
  `dataset: <name>_train`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cotaforge.train.data import build_messages, iter_rows, render_user_text, split_shards

ExportFormat = Literal["swift", "llamafactory"]
FORMATS: tuple[str, ...] = ("swift", "llamafactory")
AUDIO_TAG = "<audio>"  # both trainers' placeholder for one audio input in a user turn
EXPORT_COLUMNS = ["sample_id", "clip_id", "audio", "question", "options", "assistant_text"]
AUDIO_DIR = "audio"


@dataclass
class ExportReport:
    """What an export wrote: rows per split, clips written, and the files (JSONL per split, dataset_info)."""

    out_dir: Path
    format: str
    rows: dict[str, int] = field(default_factory=dict)
    clips: int = 0
    files: list[Path] = field(default_factory=list)


def flatten_content(content: str | list[dict[str, Any]]) -> str:
    """A chat message's content as one string, each audio part as an `<audio>` tag in its place."""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.get("type") == "audio":
            parts.append(AUDIO_TAG)
        elif part.get("type") == "text":
            parts.append(part["text"])
        else:
            raise ValueError(f"unsupported message part {part.get('type')!r}: only audio and text are exported")
    return "".join(parts)


def conversation(question: str, options: list[str], assistant_text: str) -> list[dict[str, str]]:
    """The training conversation (system, user, assistant) with string contents and the `<audio>` tag."""
    return [{"role": message["role"], "content": flatten_content(message["content"])}
            for message in build_messages(render_user_text(question, options), assistant_text)]


def _dataset_splits(dataset_dir: Path) -> list[str]:
    manifest_path = dataset_dir / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        return list(dict.fromkeys(shard["split"] for shard in manifest.get("shards", [])))
    names = sorted((dataset_dir / "data").glob("*-*.parquet"))
    return list(dict.fromkeys(path.name.split("-")[0] for path in names))


def _write_audio(out_dir: Path, clip_id: str, audio: dict[str, Any] | None, where: str) -> str:
    if not audio or not audio.get("bytes"):
        raise ValueError(f"{where} has no audio bytes; re-publish the dataset with `cotaforge publish`")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", clip_id):
        raise ValueError(f"{where} has clip_id {clip_id!r}, which is not a safe file name; re-publish the dataset")
    relative = f"{AUDIO_DIR}/{clip_id}.wav"
    path = out_dir / relative
    if not path.is_file():
        path.write_bytes(audio["bytes"])
    return relative


def export_dataset(dataset_dir: Path, fmt: ExportFormat, out_dir: Path, splits: list[str] | None = None,
                   name: str | None = None) -> ExportReport:
    """Write `dataset_dir`'s `splits` (default all) in format `fmt` to `out_dir`; return what was written.

    `name` (default the dataset's folder name) prefixes the LLaMA-Factory dataset_info entries. Raises
    ValueError for an unknown format, a folder that is not a published dataset, a missing split or a row
    without audio (naming the shard and row).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    if not dataset_dir.is_dir():
        raise ValueError(f"{dataset_dir} is not a folder; give a published dataset: output/datasets/<name>/<version>")
    available = _dataset_splits(dataset_dir)
    if not available:
        raise ValueError(f"{dataset_dir} holds no shards; give a published dataset: output/datasets/<name>/<version>")
    chosen = splits or available
    missing = [split for split in chosen if split not in available]
    if missing:
        raise ValueError(f"{dataset_dir} has no split {missing}; it has {available}")
    name = name or dataset_dir.parent.name or "cotaforge"
    (out_dir / AUDIO_DIR).mkdir(parents=True, exist_ok=True)
    report = ExportReport(out_dir, fmt)
    clips: set[str] = set()
    for split in chosen:
        shards = split_shards(dataset_dir, split)
        target = out_dir / f"{split}.jsonl"
        count = 0
        with target.open("w", encoding="utf-8") as handle:
            for index, row in enumerate(iter_rows(shards, EXPORT_COLUMNS)):
                where = f"{split} row {index} (sample {row.get('sample_id')}) of {dataset_dir}"
                relative = _write_audio(out_dir, str(row["clip_id"]), row["audio"], where)
                clips.add(relative)
                messages = conversation(row["question"], row["options"] or [], row["assistant_text"])
                if fmt == "swift":
                    record: dict[str, Any] = {"messages": messages,
                                              "audios": [str((out_dir / relative).resolve())]}
                else:
                    record = {"messages": messages[1:], "system": messages[0]["content"], "audios": [relative]}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
        report.rows[split] = count
        report.files.append(target)
    report.clips = len(clips)
    if fmt == "llamafactory":
        report.files.append(_write_dataset_info(out_dir, name, chosen))
    return report


def _write_dataset_info(out_dir: Path, name: str, splits: list[str]) -> Path:
    """Merge one sharegpt entry per split into `out_dir`/dataset_info.json (other entries are kept)."""
    path = out_dir / "dataset_info.json"
    info: dict[str, Any] = {}
    if path.is_file():
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}); fix or remove it, then export again") from exc
        if not isinstance(info, dict):
            raise ValueError(f"{path} must hold a JSON object of dataset entries; fix or remove it")
    for split in splits:
        info[f"{name}_{split}"] = {
            "file_name": f"{split}.jsonl",
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "system": "system", "audios": "audios"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
        }
    path.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
