"""Evaluation: datasets and MMAU-style files in, tables by split / type / class out; CLI and flow wiring."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("transformers")

from typer.testing import CliRunner  # noqa: E402

from cotaforge.train.evaluate import evaluate_model, load_items, swap_options  # noqa: E402
from cotaforge.train.recipe import run_finetune  # noqa: E402

from .factories import tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def trained_run(digit_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    result = run_finetune(tiny_config(digit_dataset, tmp_path_factory.mktemp("runs")))
    return result.run_dir


@pytest.fixture(scope="module")
def mmau_file(digit_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MMAU-style benchmark of two questions whose audio files sit beside the JSON."""
    folder = tmp_path_factory.mktemp("mmau")
    items = list(load_items(str(digit_dataset), ["test"], max_rows=2))
    import soundfile as sf

    records = []
    for index, item in enumerate(items):
        sf.write(folder / f"clip{index}.wav", item.samples, 16_000)
        options = item.options or ["zero", "one"]
        records.append({"id": f"q{index}", "audio_id": f"clip{index}.wav", "question": item.question,
                        "choices": options, "answer": options[0], "task": "speech", "category": "digits",
                        "split": "test-mini"})
    path = folder / "mmau-test-mini.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def test_swapping_options_rewrites_every_mention_after_planning() -> None:
    options = ["three", "seven", "one", "zero"]
    text = ("<THINK><PLANNING>Choose among A (three), B (seven), C (one), D (zero).</PLANNING><CAPTION>A man "
            "says Seven.</CAPTION><REASONING>A (three), C (one) and D (zero) do not fit, so option B, seven."
            "</REASONING><SUMMARY>B, seven.</SUMMARY></THINK><RESPONSE>The answer is B</RESPONSE>")
    swapped = swap_options(text, options, chosen=1, candidate=0)
    assert swapped == ("<THINK><PLANNING>Choose among A (three), B (seven), C (one), D (zero).</PLANNING><CAPTION>"
                       "A man says Three.</CAPTION><REASONING>B (seven), C (one) and D (zero) do not fit, so option "
                       "A, three.</REASONING><SUMMARY>A, three.</SUMMARY></THINK><RESPONSE>The answer is A"
                       "</RESPONSE>")
    assert swap_options(text, options, chosen=1, candidate=1) == text


@pytest.mark.parametrize("scoring", ["generate", "options"])
def test_evaluation_reports_by_split_type_and_class(trained_run: Path, digit_dataset: Path, tmp_path: Path,
                                                   scoring: str) -> None:
    report = evaluate_model(str(trained_run), str(digit_dataset), splits=["test", "validation"], scoring=scoring,
                            max_new_tokens=20, batch_size=8, max_rows=24, out_dir=tmp_path)
    # The first 24 rows of a split: six clips of "zero" and two of "one", each asked three ways.
    assert len(report.items) == 48
    groups = {(row.group, row.value): row for row in report.rows}
    assert groups[("all", "all")].n == 48
    assert {"test", "validation"} <= {value for group, value in groups if group == "split"}
    mc = groups[("split/type", "test/multiple_choice")]
    assert mc.chance == pytest.approx(0.25)
    assert groups[("split/type", "test/yes_no")].chance == pytest.approx(0.5)
    assert groups[("split/type", "test/open_ended")].chance is None
    assert all(0 <= row.accuracy <= 1 and 0 <= row.format_compliance <= 1 for row in report.rows)
    assert "| split/type | test/multiple_choice |" in (tmp_path / "eval.md").read_text()
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == 48
    summary = json.loads((tmp_path / "eval.json").read_text())
    assert summary["scoring"] == scoring
    # The listening measure, per split and question type: each question also answered with a partner's audio.
    by_type = {row["value"]: row for row in summary["rows"] if row["group"] == "split/type"}
    for value in ("test/multiple_choice", "test/yes_no", "test/open_ended", "validation/multiple_choice"):
        row = by_type[value]
        assert row["n_swapped"] > 0 and 0 <= row["accuracy_swapped_audio"] <= 1
        assert row["listening_gap"] == pytest.approx(row["accuracy"] - row["accuracy_swapped_audio"]) or \
            row["n_swapped"] < row["n"]
        assert row["answer_loss"] is not None and row["answer_loss_swapped_audio"] is not None
    predictions = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    paired = [p for p in predictions if p["swapped_clip"] is not None]
    assert paired and all(p["output_swapped_audio"] is not None for p in paired)
    assert "| swapped audio | listening gap |" in (tmp_path / "eval.md").read_text()


def test_an_mmau_style_file_is_evaluated(trained_run: Path, mmau_file: Path) -> None:
    items = list(load_items(str(mmau_file), ["ignored"]))
    assert [item.answer for item in items] == ["A", "A"] and items[0].split == "test-mini"
    assert items[0].class_label == "digits" and items[0].samples.dtype.name == "float32"
    report = evaluate_model(str(trained_run / "final"), str(mmau_file), scoring="options", max_new_tokens=10)
    assert [row.value for row in report.rows if row.group == "split"] == ["test-mini"]


def test_an_unknown_data_argument_says_what_to_give(trained_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="published dataset folder"):
        evaluate_model(str(trained_run), str(tmp_path / "missing.csv"))


def test_cli_finetune_and_evaluate(digit_dataset: Path, tmp_path: Path) -> None:
    import typer

    from cotaforge.train.cli import evaluate, finetune

    cfg = tiny_config(digit_dataset, tmp_path, "cli", train={"max_steps": 2}, evaluate={"max_new_tokens": 8})
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(cfg.to_yaml(), encoding="utf-8")
    app = typer.Typer()
    app.command("finetune")(finetune)
    app.command("evaluate")(evaluate)
    runner = CliRunner()

    result = runner.invoke(app, ["finetune", str(config_path), "--set", "train.max_steps=3"])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "cli"
    assert (run_dir / "loss.png").stat().st_size > 0 and (run_dir / "eval.md").is_file()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["max_steps"] == 3

    result = runner.invoke(app, ["evaluate", str(run_dir), str(digit_dataset), "--split", "validation",
                                 "--max-rows", "4", "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    assert "validation/multiple_choice" in result.output

    result = runner.invoke(app, ["finetune", str(config_path), "--set", "train.batch_size=0"])
    assert result.exit_code == 2 and "train.batch_size" in result.output


@pytest.mark.integration
@pytest.mark.slow
def test_prefect_flow_trains_and_evaluates(digit_dataset: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    from flows.finetune import finetune_flow

    cfg = tiny_config(digit_dataset, tmp_path, "flow", train={"max_steps": 2}, evaluate={"max_new_tokens": 8})
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(cfg.to_yaml(), encoding="utf-8")
    result = finetune_flow(str(config_path), ["evaluate.max_rows=4"])
    assert Path(result["eval_table"]).is_file() and os.path.isdir(result["model"])
