"""What every stage flow shares: config in and out of task parameters, and mapping a task over batches.

Tasks take the run directory's path, the config as a plain dict and a batch number: paths, never audio or
tables. Prefect's own result caching is off; cotaforge's part fingerprints decide what to redo.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from cotaforge.config import RunConfig
from cotaforge.models import StageReport, merge_reports
from cotaforge.store import RunDir

TASK_OPTIONS = {"retries": 2, "retry_delay_seconds": 5, "cache_policy": NO_CACHE, "persist_result": False}


def load(cfg: dict) -> tuple[RunConfig, RunDir]:
    config = RunConfig.model_validate(cfg)
    return config, RunDir.for_config(config)


def batch_task(name: str, stage_function):
    """A Prefect task that runs `stage_function(run, cfg, batch)` for one batch."""

    @task(name=name, task_run_name=f"{name}-{{batch}}", **TASK_OPTIONS)
    def run_one(run_root: str, cfg: dict, batch: int) -> StageReport:
        return stage_function(RunDir(Path(run_root)), RunConfig.model_validate(cfg), batch)

    return run_one


def map_batches(stage: str, batch_task_fn, cfg: dict) -> StageReport:
    """Map one stage's task over every batch of the run and merge the batch reports."""
    _, run = load(cfg)
    futures = batch_task_fn.map(unmapped(str(run.root)), unmapped(cfg), list(range(run.batch_count())))
    return merge_reports(stage, [future.result() for future in futures])


def with_workers(stage_flow, cfg: dict):
    """The flow with a thread pool of `run.workers`: batches run that many at a time, not all at once."""
    config = RunConfig.model_validate(cfg)
    return stage_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=config.run.workers))


def run_from_argv(stage_flow) -> None:
    """`python -m flows.<stage> CONFIG.yaml [key=value ...]`: run one flow from a config file."""
    import sys

    from cotaforge.config import load_config

    if len(sys.argv) < 2:
        raise SystemExit(f"usage: python -m {stage_flow.__module__} CONFIG.yaml [key=value ...]")
    cfg = load_config(Path(sys.argv[1]), sys.argv[2:]).to_dict()
    print(with_workers(stage_flow, cfg)(cfg))
