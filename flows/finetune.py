"""Fine-tune flow: train a Qwen2-Audio model on a published dataset, then evaluate it.

Why a flow: training runs for hours on GPUs and machines get preempted. The train task retries, and a
retry resumes exactly from the run folder's latest checkpoint (model, optimizer, scheduler, data
position, RNG), so a retried run ends with the same weights as an uninterrupted one. Tasks pass the config
path and overrides, never models or tensors. The run folder gets loss.png, eval.md and eval.json.

    python -m flows.finetune configs/finetune/tiny-cpu.yaml [train.max_steps=50 ...]

`cotaforge finetune CONFIG` calls the same two library functions without Prefect.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from cotaforge.train.config import load_finetune_config
from cotaforge.train.recipe import evaluate_run, run_finetune

TASK_OPTIONS = {"cache_policy": NO_CACHE, "persist_result": False}


@task(name="finetune-train", retries=2, retry_delay_seconds=30, **TASK_OPTIONS)
def train_task(config: str, overrides: list[str]) -> str:
    """Train to `train.max_steps`, resuming from the latest checkpoint; returns the exported model folder."""
    result = run_finetune(load_finetune_config(Path(config), overrides))
    if result.final_dir is None:
        raise ValueError(f"training stopped at step {result.steps} before train.max_steps; run the flow again")
    return str(result.final_dir)


@task(name="finetune-evaluate", retries=1, retry_delay_seconds=10, **TASK_OPTIONS)
def evaluate_task(config: str, overrides: list[str]) -> str:
    """Evaluate the exported model; returns the path of the markdown table."""
    cfg = load_finetune_config(Path(config), overrides)
    evaluate_run(cfg)
    return str(cfg.run_dir / "eval.md")


@flow(name="cotaforge-finetune")
def finetune_flow(config: str, overrides: list[str] | None = None) -> dict[str, str]:
    overrides = overrides or []
    final_dir = train_task(config, overrides)
    table = evaluate_task(config, overrides)
    return {"model": final_dir, "eval_table": table}


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m flows.finetune CONFIG.yaml [key=value ...]")
    print(finetune_flow(sys.argv[1], sys.argv[2:]))
