"""`cotaforge finetune` and `cotaforge evaluate`: typer command functions the main CLI registers."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import typer

from cotaforge.train.config import load_finetune_config


def _fail(exc: ValueError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(code=2)


def _log_to_stderr() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file is too much


def finetune(
    config: Path = typer.Argument(..., help="a fine-tuning YAML file, e.g. configs/finetune/tiny-cpu.yaml"),
    set_: list[str] = typer.Option(None, "--set", help="override a key: --set train.max_steps=50"),
    stop_at_step: int = typer.Option(None, help="stop after this step with a checkpoint; run again to resume"),
    evaluate: bool = typer.Option(True, help="evaluate the trained model on the config's evaluation splits"),
) -> None:
    """Train (resuming from the run folder's latest checkpoint), plot the loss curve, then evaluate."""
    from cotaforge.train.recipe import evaluate_run, run_finetune

    _log_to_stderr()
    try:
        cfg = load_finetune_config(config, set_)
        result = run_finetune(cfg, stop_at_step=stop_at_step)
        typer.echo(f"trained {result.steps} steps in {result.seconds:.0f} s; run folder {result.run_dir}")
        # Evaluation runs in one process: under a multi-GPU launcher the other ranks are done here.
        if evaluate and result.final_dir is not None and os.environ.get("RANK", "0") == "0":
            typer.echo(evaluate_run(cfg).to_markdown())
    except ValueError as exc:
        raise _fail(exc) from exc


def evaluate(
    model: str = typer.Argument(..., help="a run folder, its final/ folder, or a Hub model id"),
    data: str = typer.Argument(..., help="a published dataset folder or an MMAU-style JSON file"),
    split: list[str] = typer.Option(["test"], "--split", help="dataset splits to evaluate (repeatable)"),
    scoring: str = typer.Option("generate", help="'generate', or 'options': multiple choice and yes/no decided by "
                                                 "log-likelihood of the model's own answer rewritten per option"),
    max_new_tokens: int = typer.Option(512, min=1),
    batch_size: int = typer.Option(8, min=1),
    max_rows: int = typer.Option(None, min=1, help="questions per split; default all"),
    question_type: list[str] = typer.Option(None, "--question-type", help="only these types (repeatable)"),
    out: Path = typer.Option(None, help="folder for eval.md, eval.json and predictions.jsonl"),
    seed: int = typer.Option(0, min=0, help="draws each question's swapped-audio partner clip"),
    swap_audio: bool = typer.Option(True, help="also answer with a partner clip's audio: the listening gap"),
) -> None:
    """Answer with own and swapped audio, parse by the documented rules, print accuracy and listening gap."""
    from cotaforge.train.evaluate import evaluate_model

    _log_to_stderr()
    if scoring not in ("generate", "options"):
        raise _fail(ValueError(f"--scoring {scoring!r}: use 'generate' or 'options'"))
    try:
        report = evaluate_model(model, data, split, scoring,  # type: ignore[arg-type]
                                max_new_tokens, batch_size, max_rows, question_type or None, out, seed=seed,
                                swap_audio=swap_audio)
    except ValueError as exc:
        raise _fail(exc) from exc
    typer.echo(report.to_markdown())
