"""Where a stage's batch tasks run: `run.executor` threads (this process) or dask (worker processes).

- `threads` (default): a thread pool of `run.workers` in the flow's process.
- `dask`: prefect-dask's `DaskTaskRunner`. Without `run.dask_address` a local cluster of `run.workers` worker
  processes with one thread each starts (once per pipeline run, not once per stage); with an address the tasks go
  to that running cluster (`dask scheduler` + `dask worker`, or any Dask deployment).

Stages that send teacher requests (expand with an LLM teacher, caption in an LLM mode, validate with the judge)
keep the thread pool in the flow's process under either executor. Their work is waiting on a server, not CPU; the
response cache is one SQLite file beside the flow, each answer committed as it arrives, so no worker on another
machine can lose or repeat an answered request, and a vLLM teacher is loaded once. Everything else (decoding,
captions from facts, template chains of thought, checks, balancing) goes to the workers.

A cluster that answers but has no worker (none started yet, or all of them died) would leave the batches
waiting forever: a stage first waits up to `run.dask_worker_wait_s` for a worker, and while it runs, a cluster
left without any worker for that long stops the run with a CotaforgeError naming the scheduler (exit 2).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar

import dask
import distributed
from distributed.comm.core import CommClosedError
from distributed.scheduler import KilledWorker
from prefect.client.schemas.objects import State
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from cotaforge.config import RunConfig
from cotaforge.errors import CotaforgeError

# How long a client waits for a scheduler before saying it is unreachable (Dask's own default is 30 s).
CONNECT_TIMEOUT_S = 10

_local_address: ContextVar[str | None] = ContextVar("cotaforge_local_dask_address", default=None)


def sends_teacher_requests(stage: str, config: RunConfig) -> bool:
    """Whether `stage`'s batches ask a teacher server or engine (the template teacher asks nothing)."""
    if config.teacher.backend == "template":
        return False
    return (stage == "expand" or (stage == "caption" and config.caption.mode != "facts")
            or (stage == "validate" and config.validate_.judge))


def task_runner(stage: str, config: RunConfig) -> TaskRunner:
    """The task runner for one stage flow under `run.executor` (see the module docstring)."""
    if config.run.executor == "threads" or sends_teacher_requests(stage, config):
        return ThreadPoolTaskRunner(max_workers=config.run.workers)
    address = config.run.dask_address or _local_address.get()
    wait_s = config.run.dask_worker_wait_s
    if address:
        return WorkerTaskRunner(address=address, worker_wait_s=wait_s)
    return WorkerTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=_local_cluster_kwargs(config),
                            worker_wait_s=wait_s)


def runs_elsewhere(runner: TaskRunner) -> bool:
    """Whether tasks submitted to `runner` run in other processes (their progress calls do not reach this one)."""
    return not isinstance(runner, ThreadPoolTaskRunner)


def runner_address(runner: TaskRunner) -> str:
    """The scheduler a Dask runner talks to, for error messages; '' for other runners."""
    address = getattr(runner, "address", None)
    cluster = getattr(runner, "_cluster", None)
    return address or (cluster.scheduler_address if cluster is not None else "")


@contextmanager
def shared_cluster(config: RunConfig) -> Iterator[None]:
    """Around a run of several stage flows: start the local Dask cluster once and let every stage use it."""
    if config.run.executor != "dask" or config.run.dask_address or _local_address.get():
        yield
        return
    from distributed import LocalCluster

    _quiet_dask()
    cluster = LocalCluster(**_local_cluster_kwargs(config))
    token = _local_address.set(cluster.scheduler_address)
    try:
        yield
    finally:
        _local_address.reset(token)
        with _quiet_shutdown():
            cluster.close()


def _local_cluster_kwargs(config: RunConfig) -> dict:
    # One single-threaded process per worker: the stages are Python-bound, threads would share one GIL.
    return {"n_workers": config.run.workers, "threads_per_worker": 1, "processes": True,
            "host": "127.0.0.1", "dashboard_address": None, "silence_logs": logging.WARNING}


def _quiet_dask() -> None:
    """Dask's INFO lines (workers joining and leaving) show only with Prefect's own INFO logs (`--verbose`)."""
    from prefect.settings import PREFECT_LOGGING_LEVEL

    verbose = str(PREFECT_LOGGING_LEVEL.value()).upper() in ("DEBUG", "INFO")
    logging.getLogger("distributed").setLevel(logging.INFO if verbose else logging.WARNING)


@contextmanager
def _quiet_shutdown() -> Iterator[None]:
    """While a local cluster closes with every batch done: a worker process still flushing Prefect's events
    after 4 s is stopped by its nanny, which needs no WARNING (shown with `--verbose`)."""
    nanny = logging.getLogger("distributed.nanny")
    level = nanny.level
    if logging.getLogger("distributed").getEffectiveLevel() > logging.INFO:
        nanny.setLevel(logging.ERROR)
    try:
        yield
    finally:
        nanny.setLevel(level)


def _api_url_for_workers():
    """Worker processes report task runs to the flow's Prefect API. With no `PREFECT_API_URL` set, the flow
    runs a temporary server on 127.0.0.1; hand its address on, or every worker would start a server of its own.
    Workers on other machines need a Prefect server they can reach: set `PREFECT_API_URL` (see README)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        return ExitStack()
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the same instance the flow's own client uses
    server.start()
    return temporary_settings({PREFECT_API_URL: server.api_url})


class WorkerTaskRunner(DaskTaskRunner):
    """`DaskTaskRunner` that connects as the flow starts (an unreachable scheduler fails at once, by address),
    waits up to `worker_wait_s` for a worker (then fails, by address), quiets Dask's INFO logs and hands the
    flow's Prefect API address on to the workers."""

    def __init__(self, *args, worker_wait_s: float = 60.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.worker_wait_s = worker_wait_s

    def duplicate(self) -> "WorkerTaskRunner":
        twin = super().duplicate()
        twin.worker_wait_s = self.worker_wait_s
        return twin

    def __enter__(self) -> "WorkerTaskRunner":
        _quiet_dask()
        super().__enter__()
        self._exit_stack.enter_context(dask.config.set({"distributed.comm.timeouts.connect": CONNECT_TIMEOUT_S}))
        self._exit_stack.enter_context(_api_url_for_workers())
        try:
            self.client  # noqa: B018 - connects (or starts the local cluster) now, not at the first batch
        except (OSError, TimeoutError) as exc:
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise CotaforgeError(_unreachable(self.address, exc)) from None
        try:
            self.client.wait_for_workers(1, timeout=self.worker_wait_s)
        except (OSError, TimeoutError) as exc:
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise CotaforgeError(_no_workers(runner_address(self), self.worker_wait_s)) from None
        return self

    def __exit__(self, *args) -> None:
        with _quiet_shutdown():
            super().__exit__(*args)


class WorkerWatch:
    """What a stage's flow knows of the workers under its task runner: how many there are (to size its tasks)
    and, while it waits on them, whether any is left."""

    def __init__(self, runner: TaskRunner, workers: int, wait_s: float) -> None:
        self.runner, self._workers, self.wait_s = runner, workers, wait_s
        self._none_since: float | None = None
        # How often the flow looks at the cluster while no task finishes.
        self.poll_s = None if not runs_elsewhere(runner) else min(5.0, max(wait_s / 4, 0.1))

    @classmethod
    def for_runner(cls, runner: TaskRunner) -> "WorkerWatch":
        if isinstance(runner, ThreadPoolTaskRunner):
            return cls(runner, runner._max_workers, 0.0)
        return cls(runner, 0, getattr(runner, "worker_wait_s", 60.0))

    def workers(self) -> int:
        """Worker threads the runner has now (the pool's size; a Dask cluster's threads over all workers)."""
        if not runs_elsewhere(self.runner):
            return self._workers
        return sum(self._nthreads().values())

    def check(self, stage: str) -> None:
        """A CotaforgeError naming the scheduler when the cluster has had no worker for `wait_s` seconds."""
        if not runs_elsewhere(self.runner):
            return
        if self._nthreads():
            self._none_since = None
            return
        now = time.monotonic()
        self._none_since = self._none_since or now
        if now - self._none_since >= self.wait_s:
            raise CotaforgeError(f"{stage}: " + _no_workers(runner_address(self.runner), self.wait_s, alive=False))

    def _nthreads(self) -> dict:
        try:
            return self.runner.client.nthreads()
        except (Exception, asyncio.CancelledError) as exc:
            raise CotaforgeError(
                f"lost the Dask scheduler at {runner_address(self.runner)}: {type(exc).__name__}: {exc}. The "
                "batches already finished are kept: re-run the same command once the cluster is back") from None


def batch_result(future, stage: str, batches: range, watch: WorkerWatch):
    """One batch task's result (the reports of its batches). The engine losing it (the scheduler gone, every
    worker that ran it killed, no worker left to run it for `watch.wait_s`) stops the run with a CotaforgeError
    that names the scheduler; the task's own error is raised as it is."""
    runner = watch.runner
    which = f"batch {batches[0]}" if len(batches) == 1 else f"batches {batches[0]}-{batches[-1]}"
    wrapped = getattr(future, "wrapped_future", None)
    if not isinstance(wrapped, distributed.Future):
        return future.result()
    try:
        state = _fetch_value(wrapped, stage, watch)
    except KilledWorker as exc:
        raise CotaforgeError(
            f"{stage} {which}: every Dask worker that ran them died ({exc.allowed_failures + 1} of them; "
            "out of memory? see the workers' logs). The batches already finished are kept: re-run the same "
            "command to go on") from None
    except CotaforgeError:
        raise
    except (Exception, asyncio.CancelledError) as exc:
        client = getattr(runner, "_client", None)
        # A closed connection is the scheduler going away, even before the client has noticed it; an error the
        # scheduler reported for the task (one a plain function raised, a TimeoutError included) is the task's.
        lost = wrapped.status != "error" and (
            isinstance(exc, (CommClosedError, OSError, asyncio.CancelledError, concurrent.futures.CancelledError))
            or client is None or client.status != "running")
        what = "lost the Dask scheduler at" if lost else "the Dask cluster failed the task at"
        raise CotaforgeError(
            f"{what} {runner_address(runner)} during {stage} ({which}): {type(exc).__name__}: {exc}. "
            "The batches already finished are kept: re-run the same command once the cluster is back") from None
    # The task's final Prefect state, read as `PrefectDaskFuture.result()` reads it: a failure inside the task
    # comes out here. `future.result()` would fetch the value from the cluster a second time, with no bound.
    return state.result(raise_on_failure=True, _sync=True) if isinstance(state, State) else state


def _fetch_value(wrapped: distributed.Future, stage: str, watch: WorkerWatch):
    """The value of a Dask task (a Prefect task's final state), fetched to this process; while it is not here
    the cluster is looked at every `watch.poll_s` (CotaforgeError from `watch.check` when no worker is left).

    A task being done is not enough: its value stays on the worker that computed it until it is fetched, and a
    worker that dies before or while sending it leaves the task to be computed again, which never happens
    with no worker left. `Future.result()` without a timeout then waits forever; with one, each timeout would
    drop a fetch under way and start it over. One fetch runs on the client's event loop until it is done."""
    async def value() -> object:
        return await wrapped

    # A fetch given up on is left to the client's close at the stage's end: cancelling it mid-way makes Dask's
    # inner waits log "Task exception was never retrieved" tracebacks under the run's error message.
    fetching = asyncio.run_coroutine_threadsafe(value(), wrapped.client.loop.asyncio_loop)
    while True:
        try:
            return fetching.result(timeout=watch.poll_s)
        except TimeoutError:
            if fetching.done():  # the task's own TimeoutError, not the wait's
                raise
            watch.check(stage)


def check_scheduler(config: RunConfig) -> None:
    """Before a run starts: a CotaforgeError naming `run.dask_address` when no scheduler answers there, or when
    it has no worker within `run.dask_worker_wait_s`."""
    if config.run.executor != "dask" or not config.run.dask_address:
        return
    try:
        with dask.config.set({"distributed.comm.timeouts.connect": CONNECT_TIMEOUT_S}), \
                distributed.Client(config.run.dask_address, timeout=CONNECT_TIMEOUT_S, set_as_default=False) as client:
            try:
                client.wait_for_workers(1, timeout=config.run.dask_worker_wait_s)
            except TimeoutError:
                raise CotaforgeError(_no_workers(config.run.dask_address, config.run.dask_worker_wait_s)) from None
    except (OSError, TimeoutError) as exc:
        raise CotaforgeError(_unreachable(config.run.dask_address, exc)) from None


def _no_workers(address: str, wait_s: float, alive: bool = True) -> str:
    if alive:
        had = f"has no worker after {wait_s:g} s"
    else:
        had = f"has been without any worker for {wait_s:g} s (all of them died or left)"
    return (f"the Dask scheduler at {address} {had}. Start workers for it (`dask worker {address}` on each "
            "machine) and re-run the same command; the batches already finished are kept. "
            "run.dask_worker_wait_s sets how long to wait")


def _unreachable(address: str, exc: BaseException) -> str:
    return (f"cannot reach the Dask scheduler at {address}: {exc}. Start it (`dask scheduler`, then "
            "`dask worker ADDRESS` on each machine) or fix --dask-address / run.dask_address")
