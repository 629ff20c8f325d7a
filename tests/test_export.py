"""`cotaforge export`: ms-swift JSONL and LLaMA-Factory sharegpt files that carry what cotaforge trains on.

The files are checked against the fields each project documents: ms-swift's standard keys (docs/source_en/
Customization/Custom-dataset.md) and LLaMA-Factory's sharegpt entry with an `audios` column (data/README.md),
including its rule that a row holds as many `<audio>` tags as audio paths. ms-swift's own `load_dataset` reads
the swift export in `.venv-swift`, the environment `make test` builds beside `.venv` (ms-swift 4.6.0 pins
transformers < 5.20; that environment sees `.venv`'s torch). LLaMA-Factory 0.9.5 cannot be installed without a
CUDA build of torch (and its data module imports torchaudio), so its files are checked against the fields only.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import soundfile as sf
from typer.testing import CliRunner

from cotaforge.export import AUDIO_TAG, conversation, export_dataset
from cotaforge.models import SYSTEM_PROMPT
from cotaforge.train.data import build_messages, render_user_text

from .train.factories import write_digit_dataset

SWIFT_KEYS = {"messages", "rejected_response", "label", "images", "videos", "audios", "tools", "objects"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export") / "digits" / "v1"
    return write_digit_dataset(root, {"train": ["george"], "test": ["lucas"]}, digits=[0, 1], takes=[0, 1],
                               question_types=("multiple_choice", "yes_no"))


def _rows(dataset: Path, split: str) -> list[dict]:
    return pq.read_table(next((dataset / "data").glob(f"{split}-*.parquet"))).to_pylist()


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_swift_rows_hold_the_training_conversation_and_one_wav_per_clip(dataset: Path, tmp_path: Path) -> None:
    report = export_dataset(dataset, "swift", tmp_path / "swift")
    assert report.rows == {"train": 8, "test": 8} and report.clips == 8
    assert sorted(path.name for path in report.files) == ["test.jsonl", "train.jsonl"]
    for split in ("train", "test"):
        rows, lines = _rows(dataset, split), _lines(tmp_path / "swift" / f"{split}.jsonl")
        assert len(lines) == len(rows)
        for row, line in zip(rows, lines):
            assert set(line) <= SWIFT_KEYS and set(line) == {"messages", "audios"}
            system, user, assistant = line["messages"]
            assert [system["role"], user["role"], assistant["role"]] == ["system", "user", "assistant"]
            assert system["content"] == SYSTEM_PROMPT
            # The audio comes before the question, as in training; one tag per audio path.
            assert user["content"] == AUDIO_TAG + render_user_text(row["question"], row["options"])
            assert user["content"].count(AUDIO_TAG) == len(line["audios"]) == 1
            assert assistant["content"] == row["assistant_text"]
            path = Path(line["audios"][0])
            assert path.is_absolute() and path.read_bytes() == row["audio"]["bytes"]
            assert path.name == f"{row['clip_id']}.wav" and sf.info(str(path)).samplerate == 16_000
    assert len(list((tmp_path / "swift" / "audio").iterdir())) == 8


def test_the_conversation_is_the_one_the_recipe_builds() -> None:
    trained = build_messages(render_user_text("Which digit?", ["one", "two"]), "<THINK>t</THINK><RESPONSE>A</RESPONSE>")
    exported = conversation("Which digit?", ["one", "two"], "<THINK>t</THINK><RESPONSE>A</RESPONSE>")
    assert [m["role"] for m in exported] == [m["role"] for m in trained]
    assert exported[0]["content"] == trained[0]["content"] and exported[2]["content"] == trained[2]["content"]
    assert trained[1]["content"][0] == {"type": "audio"}
    assert exported[1]["content"] == "<audio>Which digit?\nA. one\nB. two"


def test_llamafactory_rows_and_dataset_info(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "lf"
    out.mkdir()
    (out / "dataset_info.json").write_text(json.dumps({"mine": {"file_name": "mine.json"}}), encoding="utf-8")
    report = export_dataset(dataset, "llamafactory", out, splits=["test"])
    info = json.loads((out / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["mine"] == {"file_name": "mine.json"}  # entries already there are kept
    assert info["digits_test"] == {
        "file_name": "test.jsonl", "formatting": "sharegpt",
        "columns": {"messages": "messages", "system": "system", "audios": "audios"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}
    assert report.rows == {"test": 8} and not (out / "train.jsonl").exists()
    rows = _rows(dataset, "test")
    for row, line in zip(rows, _lines(out / "test.jsonl")):
        assert line["system"] == SYSTEM_PROMPT
        assert [m["role"] for m in line["messages"]] == ["user", "assistant"]
        assert line["messages"][0]["content"].count("<audio>") == len(line["audios"]) == 1
        assert line["messages"][1]["content"] == row["assistant_text"]
        assert not Path(line["audios"][0]).is_absolute()  # resolved against dataset_dir by LLaMA-Factory
        assert (out / line["audios"][0]).read_bytes() == row["audio"]["bytes"]


def test_bad_input_says_what_to_give(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown export format 'hf'"):
        export_dataset(dataset, "hf", tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"no split \['dev'\]; it has \['train', 'test'\]"):
        export_dataset(dataset, "swift", tmp_path, splits=["dev"])
    with pytest.raises(ValueError, match="not a folder"):
        export_dataset(tmp_path / "missing", "swift", tmp_path)
    broken = tmp_path / "lf"
    broken.mkdir()
    (broken / "dataset_info.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="dataset_info.json is not valid JSON"):
        export_dataset(dataset, "llamafactory", broken)


def test_a_row_without_audio_is_named(dataset: Path, tmp_path: Path) -> None:
    import pyarrow as pa

    copy = tmp_path / "copy" / "v1"
    (copy / "data").mkdir(parents=True)
    rows = _rows(dataset, "test")
    rows[3]["audio"] = {"bytes": b"", "path": "x.wav"}
    pq.write_table(pa.Table.from_pylist(rows), copy / "data" / "test-00000-of-00001.parquet")
    with pytest.raises(ValueError, match=f"test row 3 \\(sample {rows[3]['sample_id']}\\).*no audio bytes"):
        export_dataset(copy, "swift", tmp_path / "out")


def test_cli_export(dataset: Path, tmp_path: Path) -> None:
    from cotaforge.cli import app

    result = CliRunner().invoke(app, ["export", str(dataset), "--format", "llamafactory", "--out",
                                      str(tmp_path / "lf"), "--split", "train"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "lf" / "train.jsonl").is_file() and (tmp_path / "lf" / "dataset_info.json").is_file()
    result = CliRunner().invoke(app, ["export", str(dataset), "--format", "nope", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "unknown export format" in result.output


SWIFT_PYTHON = Path(__file__).resolve().parents[1] / ".venv-swift" / "bin" / "python"
# Run by ms-swift's interpreter: its dataset loader reads the export; prints what it loaded as JSON.
SWIFT_LOADER = """
import json, sys
try:
    from swift.dataset import load_dataset  # ms-swift 4
except ImportError:
    from swift.llm import load_dataset  # ms-swift 3
train, _ = load_dataset([sys.argv[1]], split_dataset_ratio=0.0, num_proc=1)
print(json.dumps({"rows": len(train), "first": train[0]}, default=str))
"""


def test_ms_swift_loads_the_swift_export(dataset: Path, tmp_path: Path) -> None:
    if not SWIFT_PYTHON.exists():
        pytest.skip(f"{SWIFT_PYTHON} is missing: `make .venv-swift/.installed` builds ms-swift's environment")
    export_dataset(dataset, "swift", tmp_path / "swift", splits=["train"])
    done = subprocess.run([str(SWIFT_PYTHON), "-c", SWIFT_LOADER, str(tmp_path / "swift" / "train.jsonl")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    rows = _rows(dataset, "train")
    assert loaded["rows"] == len(rows)
    first = loaded["first"]
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant"]
    assert first["messages"][0]["content"] == SYSTEM_PROMPT
    assert first["messages"][1]["content"].count(AUDIO_TAG) == 1
    assert first["messages"][2]["content"] == rows[0]["assistant_text"]
    assert Path(first["audios"][0]).read_bytes() == rows[0]["audio"]["bytes"]
