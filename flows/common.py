"""What every stage flow shares: config in and out of task parameters, and mapping a task over batches.

Tasks take the run directory's path, the config as a plain dict and a batch number: paths, never audio or
tables. Prefect's own result caching is off; cotaforge's part fingerprints decide what to redo.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.futures import as_completed

from cotaforge import progress
from cotaforge.config import RunConfig
from cotaforge.models import StageReport, merge_reports
from cotaforge.store import RunDir
from flows.executors import batch_result, runs_elsewhere, task_runner

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
    # Temporary files a killed run left go before anything is written; a live writer's stay.
    cleared = run.clear_stale_temporaries()
    futures = batch_task_fn.map(unmapped(str(run.root)), unmapped(cfg), list(range(run.batch_count())))
    report = collect(stage, futures)
    if cleared:
        report.notes.append(f"removed {len(cleared)} temporary file(s) a stopped run left: "
                            + ", ".join(str(p.relative_to(run.root)) for p in cleared[:5])
                            + (" …" if len(cleared) > 5 else ""))
    return report


def collect(stage: str, futures: list) -> StageReport:
    """Merge a stage's batch reports, in batch order, as their tasks finish.

    Tasks that ran in other processes (Dask workers) could not move the stage's progress bar there: it advances
    here by each batch's `rows_in` as the batch completes. A lost scheduler stops the run with a CotaforgeError.
    """
    runner = FlowRunContext.get().task_runner
    elsewhere = runs_elsewhere(runner)
    batch_of = {id(future): batch for batch, future in enumerate(futures)}
    reports: dict[int, StageReport] = {}
    for future in as_completed(list(futures)):
        batch = batch_of[id(future)]
        reports[batch] = batch_result(future, stage, batch, runner)
        if elsewhere:
            progress.advance(stage, reports[batch].rows_in)
    return merge_reports(stage, [reports[batch] for batch in sorted(reports)])


def with_workers(stage_flow, cfg: dict):
    """The flow on the task runner `run.executor` picks for its stage (flows/executors.py): batches run
    `run.workers` at a time, in a thread pool here or in Dask worker processes."""
    config = RunConfig.model_validate(cfg)
    return stage_flow.with_options(task_runner=task_runner(stage_flow.name.removeprefix("cotaforge-"), config))


def run_stage(stage_flow, cfg: dict) -> StageReport:
    """Run one stage flow (see `with_workers`). Its report's `seconds` is the stage's wall time: the batches'
    own times overlap when they run in parallel, so their sum overstates it."""
    started = time.perf_counter()
    report = with_workers(stage_flow, cfg)(cfg)
    report.seconds = time.perf_counter() - started
    return report


def run_from_argv(stage_flow) -> None:
    """`python -m flows.<stage> CONFIG.yaml [key=value ...]`: run one flow from a config file."""
    import sys

    from cotaforge.config import load_config

    if len(sys.argv) < 2:
        raise SystemExit(f"usage: python -m {stage_flow.__module__} CONFIG.yaml [key=value ...]")
    cfg = load_config(Path(sys.argv[1]), sys.argv[2:]).to_dict()
    # The pipeline flow picks each stage's runner itself; a stage flow alone gets its own here.
    print(stage_flow(cfg) if stage_flow.name == "cotaforge-run" else run_stage(stage_flow, cfg))
