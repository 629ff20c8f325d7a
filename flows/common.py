"""What every stage flow shares: config in and out of task parameters, and mapping a task over batches.

Tasks take the run directory's path, the config as a plain dict and a run of consecutive batch numbers: paths,
never audio or tables. Prefect's own result caching is off; cotaforge's part fingerprints decide what to redo.

One task carries several batches (`batch_runs`: about `TASKS_PER_WORKER` tasks per worker and stage) while
every batch still writes its own part. Each task costs the engine a task run, its state changes and logs
(about 0.25 s of a Dask worker's time with Prefect's task engine, against milliseconds for the batch of a light
stage), so one task per batch spent more on orchestration than on work at CoTA size. Resume, fingerprints and
output are those of single batches: a task that is retried, or that Dask hands to another worker after its
worker died, skips the parts it had already written by their fingerprints and redoes at most the batch it was
in. Batches are handed out in order, so a run's parts appear front to back.
"""

from __future__ import annotations

import functools
import gc
import math
import queue
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from prefect import task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext

from cotaforge import progress
from cotaforge.config import RunConfig
from cotaforge.models import StageReport, merge_reports
from cotaforge.prefect_server import started_here
from cotaforge.store import RunDir
from flows.executors import WorkerWatch, batch_result, runs_elsewhere, task_runner

TASK_OPTIONS = {"retries": 2, "retry_delay_seconds": 5, "cache_policy": NO_CACHE, "persist_result": False}
# Tasks per worker and stage: enough that a slow batch or a lost worker leaves little tail for the others
# to wait on, and that a remote worker's bar moves several times a stage; few enough that the engine's cost
# per task stays a small share of the stage.
TASKS_PER_WORKER = 8


def load(cfg: dict) -> tuple[RunConfig, RunDir]:
    config = RunConfig.model_validate(cfg)
    return config, RunDir.for_config(config)


def batch_task(name: str, stage_function):
    """A Prefect task that runs `stage_function(run, cfg, batch, **extra)` for batches `first`..`last`, in order,
    and returns their reports."""

    @task(name=name, task_run_name=f"{name}-{{first}}-{{last}}", **TASK_OPTIONS)
    def run_batches(run_root: str, cfg: dict, first: int, last: int, extra: dict) -> list[StageReport]:
        _tune_gc()
        run, config = RunDir(run_root), RunConfig.model_validate(cfg)
        return [stage_function(run, config, batch, **extra) for batch in range(first, last + 1)]

    return run_batches


@functools.cache
def _tune_gc() -> None:
    """Once in each process that runs batches: the objects of its imports (Prefect, Dask, pydantic: hundreds of
    thousands) leave the collector's care, and the youngest generation is collected less often. Every full
    collection walked all of them while a batch builds many short-lived containers: 0.48 s of validate's 1.04 s
    of CPU for three batches went to collecting; with this 0.02 s of 0.71 s."""
    gc.freeze()
    gc.set_threshold(10_000, *gc.get_threshold()[1:])


def batch_runs(batches: Sequence[int], workers: int, per_task: int | None = None) -> list[range]:
    """`batches` (batch numbers, ascending) in runs of consecutive numbers, at most `per_task` long; by default
    about `TASKS_PER_WORKER` runs per worker, one batch a run when there are fewer batches than that."""
    size = per_task or max(1, math.ceil(len(batches) / (max(workers, 1) * TASKS_PER_WORKER)))
    runs: list[range] = []
    for batch in batches:
        if runs and batch == runs[-1].stop and len(runs[-1]) < size:
            runs[-1] = range(runs[-1].start, batch + 1)
        else:
            runs.append(range(batch, batch + 1))
    return runs


def map_batches(stage: str, batch_task_fn, cfg: dict, batch_fingerprint=None, **extra) -> StageReport:
    """Map one stage's task over the batches of the run (runs of batches, see `batch_runs`) and merge the batch
    reports. `extra` goes to every batch as keyword arguments (a plan made once for the stage).

    With the stage's `batch_fingerprint(run, cfg, batch, **extra)`, a batch whose part already holds its
    fingerprint is not sent to a worker at all: its stored report stands. A task costs the engine a quarter of a
    second whatever it does, so a re-run with nothing to do used to spend seconds a stage sending tasks that each
    found their parts current.
    """
    config, run = load(cfg)
    # Temporary files a killed run left go before anything is written; a live writer's stay.
    cleared = run.clear_stale_temporaries()
    current = current_reports(stage, run, config, batch_fingerprint, extra) if batch_fingerprint else {}
    progress.advance(stage, sum(report.rows_in for report in current.values()))
    stale = [batch for batch in range(run.batch_count()) if batch not in current]
    watch = WorkerWatch.for_runner(FlowRunContext.get().task_runner)
    runs = batch_runs(stale, watch.workers(), config.run.batches_per_task) if stale else []
    futures = batch_task_fn.map(unmapped(str(run.root)), unmapped(cfg), [r.start for r in runs],
                                [r[-1] for r in runs], unmapped(extra)) if runs else []
    reports = {**current, **collect(stage, futures, runs, watch)}
    report = merge_reports(stage, [reports[batch] for batch in sorted(reports)])
    if cleared:
        report.notes.append(f"removed {len(cleared)} temporary file(s) a stopped run left: "
                            + ", ".join(str(p.relative_to(run.root)) for p in cleared[:5])
                            + (" …" if len(cleared) > 5 else ""))
    return report


def current_reports(stage: str, run: RunDir, config: RunConfig, batch_fingerprint,
                    extra: dict) -> dict[int, StageReport]:
    """The stored reports of the batches whose parts are current (hold `batch_fingerprint`'s value), by batch."""
    current = {}
    for batch in range(run.batch_count()):
        stored = run.part_fingerprint(stage, batch)  # None for a missing part: nothing to compare
        if stored is not None and stored == batch_fingerprint(run, config, batch, **extra):
            current[batch] = run.stored_report(stage, batch)
    return current


def collect(stage: str, futures: list, runs: list[range], watch: "WorkerWatch") -> dict[int, StageReport]:
    """A stage's batch reports, by batch, as their tasks finish.

    Tasks that ran in other processes (Dask workers) could not move the stage's progress bar there: it advances
    here by each batch's `rows_in` as its task completes. A lost scheduler, or a cluster left without a worker
    for `run.dask_worker_wait_s`, stops the run with a CotaforgeError.
    """
    runner = FlowRunContext.get().task_runner
    elsewhere = runs_elsewhere(runner)
    run_of = {id(future): batches for batches, future in zip(runs, futures)}
    reports: dict[int, StageReport] = {}
    # Prefect's `as_completed(timeout=)` arms a timer that fires wherever this thread is by then, even after
    # the futures were handed out: a queue fed by done callbacks waits without it.
    finished: queue.SimpleQueue = queue.SimpleQueue()
    for future in futures:
        future.add_done_callback(finished.put)
    for _ in futures:
        while True:
            try:
                future = finished.get(timeout=watch.poll_s)
                break
            except queue.Empty:  # nothing finished for a while: is there still a worker to run it?
                watch.check(stage)
        batches = run_of[id(future)]
        done = batch_result(future, stage, batches, watch)
        reports.update(zip(batches, done))
        if elsewhere:
            progress.advance(stage, sum(r.rows_in for r in done))
    return reports


@contextmanager
def flow_settings() -> Iterator[None]:
    """Around the flows of a command that started its own Prefect server: no flow-run heartbeats.

    Heartbeats let a long-lived server mark a flow run whose process died as crashed. The command's own server
    dies with it, so they tell no one anything, and each flow run paid up to a second for them at its end (its
    heartbeat thread sleeps in whole seconds and is joined): about 8 s of a pipeline run's 8 flows, a quarter
    of a re-run that has nothing to do. With the user's own server (`PREFECT_API_URL`), or
    `PREFECT_FLOWS_HEARTBEAT_FREQUENCY` set, Prefect's settings stand.
    """
    if not started_here() or "PREFECT_FLOWS_HEARTBEAT_FREQUENCY" in os.environ:
        yield
        return
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


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
