"""`run.executor`: the same dataset from a thread pool, a local Dask cluster and a `dask scheduler` + `dask worker`
cluster on 127.0.0.1, a worker SIGKILLed mid-run, a scheduler that is not there or goes away."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed", reason="dask[distributed] is not installed")

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
# 20 drum hits in 4 batches of 5 and a few scenes: every stage has several batches to spread over workers.
RUN_FLAGS = ["--name", "drums", "--batch-size", "5", "--set", "compose.scenes=12"]
STAGES = ("ingest", "compose", "caption", "expand", "validate", "balance", "publish")


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_HOME": str(home / ".prefect"),
            "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "cotaforge.cli", *map(str, args)]


def run_cli(*args, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run(_cli(*args), cwd=home, capture_output=True, text=True, env=_env(home),
                          timeout=400)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)


@dataclass
class Cluster:
    address: str
    scheduler: subprocess.Popen
    workers: dict[str, subprocess.Popen]  # worker name -> its process


@contextmanager
def dask_cluster(home: Path, workers: int = 2):
    """`dask scheduler` and `workers` single-threaded `dask worker` processes (no nanny: a killed worker stays
    dead), all on 127.0.0.1; every process is killed on the way out."""
    address = f"tcp://127.0.0.1:{_free_port()}"
    logs = home / "dask-logs"
    logs.mkdir(parents=True, exist_ok=True)
    processes: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> subprocess.Popen:
        with (logs / f"{name}.log").open("w") as log:
            processes.append(subprocess.Popen([str(BIN / "dask"), *args], stdout=log, stderr=subprocess.STDOUT,
                                              env=_env(home), cwd=home))
        return processes[-1]

    try:
        scheduler = start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                          "--no-dashboard")
        named = {f"w{i}": start(f"w{i}", "worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                                "--host", "127.0.0.1", "--name", f"w{i}") for i in range(workers)}
        with distributed.Client(address, timeout=60) as client:
            if workers:
                client.wait_for_workers(workers, timeout=120)
        yield Cluster(address, scheduler, named)
    finally:
        for process in reversed(processes):
            _stop(process)


def dataset_digest(out: Path) -> dict[str, str]:
    """sha256 of every published shard, and of manifest.json without its creation time."""
    dataset = out / "datasets" / "drums" / "v1"
    digest = {str(p.relative_to(dataset)): hashlib.sha256(p.read_bytes()).hexdigest()
              for p in sorted((dataset / "data").glob("*.parquet"))}
    manifest = json.loads((dataset / "manifest.json").read_text(encoding="utf-8"))
    manifest.pop("created_at")
    digest["manifest.json"] = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    return digest


def stage_reports(out: Path) -> dict[str, dict]:
    report = json.loads((out / "runs" / "drums" / "report.json").read_text(encoding="utf-8"))
    return {stage["stage"]: stage for stage in report["stages"]}


def bars(stderr: str) -> dict[str, tuple[int, int]]:
    """Each stage's final progress bar as (done, total), read from the command's stderr."""
    found = {}
    for stage, done, total in re.findall(r"^\s*(\w+) \S*━\S* +(\d+)/(\d+)", stderr, flags=re.MULTILINE):
        found[stage] = (int(done), int(total))
    return found


def assert_full_bars(result: subprocess.CompletedProcess) -> None:
    shown = bars(result.stderr)
    assert set(shown) == set(STAGES), result.stderr[-3000:]
    assert all(done == total for done, total in shown.values()), shown


@pytest.fixture(scope="module")
def threads_run(tmp_path_factory, drums_manifest) -> dict[str, str]:
    """The reference: the same run on the default thread pool, and its digest."""
    home = tmp_path_factory.mktemp("threads")
    result = run_cli("run", "--manifest", drums_manifest, "--out", home / "out", *RUN_FLAGS, home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_full_bars(result)
    return dataset_digest(home / "out")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One `dask scheduler` + two `dask worker` cluster for the tests below, which break it in file order: a
    worker is killed first, the scheduler last."""
    with dask_cluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


def _start_run(out: Path, manifest: Path, cluster: Cluster, home: Path) -> subprocess.Popen:
    # Tasks of two batches each: a worker killed in one leaves a part written and a part to redo.
    return subprocess.Popen(_cli("run", "--manifest", manifest, "--out", out, *RUN_FLAGS, "--dask-address",
                                 cluster.address, "--set", "run.batches_per_task=2"),
                            cwd=home, env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_part(run: subprocess.Popen, out: Path, stage: str, timeout_s: float = 300) -> None:
    """Until the run has written the first part of `stage`."""
    deadline = time.monotonic() + timeout_s
    while not (out / "runs" / "drums" / stage / "part-00000.parquet").exists():
        assert run.poll() is None and time.monotonic() < deadline, f"the run ended before {stage}"
        time.sleep(0.05)


def _busy_worker(client, timeout_s: float = 120) -> str:
    """The name of a worker the moment it runs a task."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        names = {address: info["name"] for address, info in client.scheduler_info()["workers"].items()}
        for address, keys in client.processing().items():
            if keys and address in names:
                return names[address]
        time.sleep(0.02)
    raise TimeoutError("no worker got a task")


@pytest.mark.integration
@pytest.mark.slow
def test_worker_killed_mid_run_the_run_completes_with_the_threads_dataset(tmp_path, drums_manifest, threads_run,
                                                                             cluster):
    out = tmp_path / "out"
    run = _start_run(out, drums_manifest, cluster, tmp_path)
    try:
        with distributed.Client(cluster.address, timeout=30) as client:
            _wait_for_part(run, out, "caption")  # finished stages sit behind the kill
            victim = _busy_worker(client)
            os.kill(cluster.workers[victim].pid, signal.SIGKILL)
        stdout, stderr = run.communicate(timeout=400)
    finally:
        _stop(run)
    assert cluster.workers[victim].wait(timeout=10) == -signal.SIGKILL
    # Dask hands the lost worker's batches to the one left: the run goes on to the end, with the same dataset.
    assert run.returncode == 0, stderr[-3000:]
    assert dataset_digest(out) == threads_run
    assert_full_bars(subprocess.CompletedProcess(run.args, 0, stdout, stderr))  # the flow moved the bars

    again = run_cli("run", "--manifest", drums_manifest, "--out", out, *RUN_FLAGS, "--dask-address",
                    cluster.address, home=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {s: r["parts_done"] for s, r in stage_reports(out).items()} == dict.fromkeys(STAGES, 0)
    assert_full_bars(again)  # a re-run that does nothing still fills every bar, publish's included
    assert dataset_digest(out) == threads_run


@pytest.mark.integration
@pytest.mark.slow
def test_scheduler_gone_mid_run_exits_2_and_the_rerun_finishes(tmp_path, drums_manifest, threads_run, cluster):
    out = tmp_path / "out"
    run = _start_run(out, drums_manifest, cluster, tmp_path)
    try:
        with distributed.Client(cluster.address, timeout=30) as client:
            _wait_for_part(run, out, "caption")
            _busy_worker(client)
        cluster.scheduler.kill()
        stdout, stderr = run.communicate(timeout=300)
    finally:
        _stop(run)
    assert run.returncode == 2, stderr[-3000:]
    assert f"lost the Dask scheduler at {cluster.address}" in " ".join(stderr.split())  # wrapped at 80 columns
    done_before = {p: p.stat().st_mtime_ns for p in (out / "runs" / "drums").glob("*/part-*.parquet")}
    assert done_before  # the batches finished before the loss are on disk

    rerun = run_cli("run", "--manifest", drums_manifest, "--out", out, *RUN_FLAGS, home=tmp_path)  # on threads
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert dataset_digest(out) == threads_run
    assert {p: p.stat().st_mtime_ns for p in done_before} == done_before  # nothing finished was redone


@pytest.mark.integration
@pytest.mark.slow
def test_local_dask_cluster_of_two_processes(tmp_path, drums_manifest, threads_run):
    result = run_cli("run", "--manifest", drums_manifest, "--out", tmp_path / "out", *RUN_FLAGS,
                     "--executor", "dask", "--workers", "2", home=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert dataset_digest(tmp_path / "out") == threads_run
    assert_full_bars(result)


@pytest.mark.integration
@pytest.mark.slow
def test_unreachable_scheduler_exits_2_naming_it(tmp_path, drums_manifest):
    address = f"tcp://127.0.0.1:{_free_port()}"  # nothing listens there
    result = run_cli("run", "--manifest", drums_manifest, "--out", tmp_path / "out", *RUN_FLAGS,
                     "--dask-address", address, home=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"cannot reach the Dask scheduler at {address}" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_scheduler_without_workers_exits_2_after_the_wait(tmp_path, drums_manifest):
    with dask_cluster(tmp_path, workers=0) as empty:
        started = time.monotonic()
        result = run_cli("run", "--manifest", drums_manifest, "--out", tmp_path / "out", *RUN_FLAGS,
                         "--dask-address", empty.address, "--set", "run.dask_worker_wait_s=3", home=tmp_path)
        took_s = time.monotonic() - started
    assert result.returncode == 2, result.stderr[-3000:]
    message = " ".join(result.stderr.split())  # wrapped at 80 columns
    assert f"the Dask scheduler at {empty.address} has no worker after 3 s" in message
    assert f"dask worker {empty.address}" in message
    assert "Traceback" not in result.stderr
    assert took_s < 120  # the wait, not forever (the rest is the command's start)


@pytest.mark.integration
@pytest.mark.slow
def test_every_worker_gone_mid_run_exits_2_and_the_rerun_finishes(tmp_path, drums_manifest, threads_run):
    out = tmp_path / "out"
    with dask_cluster(tmp_path, workers=1) as single:
        run = subprocess.Popen(_cli("run", "--manifest", drums_manifest, "--out", out, *RUN_FLAGS, "--dask-address",
                                    single.address, "--set", "run.dask_worker_wait_s=5"),
                               cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
        try:
            with distributed.Client(single.address, timeout=30) as client:
                _wait_for_part(run, out, "caption")
                _busy_worker(client)
            os.kill(single.workers["w0"].pid, signal.SIGKILL)
            stdout, stderr = run.communicate(timeout=300)
        finally:
            _stop(run)
    assert run.returncode == 2, stderr[-3000:]
    message = " ".join(stderr.split())
    assert f"the Dask scheduler at {single.address} has been without any worker for 5 s" in message
    assert f"dask worker {single.address}" in message
    done_before = {p: p.stat().st_mtime_ns for p in (out / "runs" / "drums").glob("*/part-*.parquet")}
    assert done_before

    rerun = run_cli("run", "--manifest", drums_manifest, "--out", out, *RUN_FLAGS, home=tmp_path)  # on threads
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert dataset_digest(out) == threads_run
    assert {p: p.stat().st_mtime_ns for p in done_before} == done_before  # nothing finished was redone


class _KillsItsWorkerWhenSent:
    """A finished task's value that takes its worker down the moment it is sent to the flow (pickled)."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)


def _finished_value_lost_on_the_way() -> _KillsItsWorkerWhenSent:
    return _KillsItsWorkerWhenSent()


def _times_out() -> None:
    raise TimeoutError("the server did not answer within 30 s")


def _completed_state():
    from prefect.states import Completed

    return Completed(data=["report of batch 2", "report of batch 3"])


def _failed_state():
    from prefect.states import Failed

    return Failed(data=ValueError("row 7: no audio at clips/7.wav"))


@contextmanager
def _runner_on_one_worker(home: Path, wait_s: float):
    """A started `WorkerTaskRunner` on a `dask scheduler` with one `dask worker`, for plain functions (they
    report nothing to the Prefect API, so no server need be there); yields the cluster and the runner."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.executors import WorkerTaskRunner

    with dask_cluster(home, workers=1) as single, temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}), \
            WorkerTaskRunner(address=single.address, worker_wait_s=wait_s) as runner:
        yield single, runner


def _caption_batches_result(done, runner):
    """`batch_result` for the Dask future `done` as the task of caption's batches 2-3."""
    import uuid

    from prefect_dask.task_runners import PrefectDaskFuture

    from flows.executors import WorkerWatch, batch_result

    future = PrefectDaskFuture(wrapped_future=done, task_run_id=uuid.uuid4())
    return batch_result(future, "caption", range(2, 4), WorkerWatch.for_runner(runner))


def _batch_result_within(done, runner, timeout_s: float) -> tuple[BaseException | None, float]:
    """`_caption_batches_result` in a thread given `timeout_s`: what it raised and the seconds it took. Fails the
    test when it is still waiting by then."""
    import threading

    outcome: dict[str, BaseException] = {}

    def fetch() -> None:
        try:
            _caption_batches_result(done, runner)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            outcome["error"] = exc

    fetching = threading.Thread(target=fetch, daemon=True)
    started = time.monotonic()
    fetching.start()
    fetching.join(timeout=timeout_s)
    assert not fetching.is_alive(), f"batch_result still waits after {timeout_s} s"
    return outcome.get("error"), time.monotonic() - started


@pytest.mark.integration
def test_the_only_worker_dying_while_a_finished_batch_is_fetched_stops_the_stage(tmp_path):
    """A task is done, but its value still sits on the worker that computed it; that worker dying as the flow
    fetches it leaves the task to be computed again, by nobody: the flow stops after `run.dask_worker_wait_s`
    instead of waiting for it forever."""
    from cotaforge.errors import CotaforgeError

    with _runner_on_one_worker(tmp_path, wait_s=1) as (single, runner):
        done = runner.client.submit(_finished_value_lost_on_the_way, pure=False)
        deadline = time.monotonic() + 60
        while done.status != "finished":
            assert done.status == "pending" and time.monotonic() < deadline, done.status
            time.sleep(0.02)
        error, took_s = _batch_result_within(done, runner, timeout_s=60)
        assert single.workers["w0"].wait(timeout=10) == -signal.SIGKILL
    assert isinstance(error, CotaforgeError), repr(error)
    message = " ".join(str(error).split())
    assert message.startswith(f"caption: the Dask scheduler at {single.address} has been without any worker for 1 s")
    assert took_s < 30  # the wait and a few looks at the cluster


@pytest.mark.integration
def test_batch_results_come_back_as_prefect_tasks_left_them_and_errors_at_once(tmp_path):
    """A task's final Prefect state gives its value or raises its own error; an error Dask reports for the task
    (a TimeoutError too) stops the stage at once, not after polling the cluster for ever."""
    from cotaforge.errors import CotaforgeError

    with _runner_on_one_worker(tmp_path, wait_s=1) as (single, runner):
        completed = runner.client.submit(_completed_state, pure=False)
        assert _caption_batches_result(completed, runner) == ["report of batch 2", "report of batch 3"]
        with pytest.raises(ValueError, match="row 7: no audio at clips/7.wav"):
            _caption_batches_result(runner.client.submit(_failed_state, pure=False), runner)
        error, took_s = _batch_result_within(runner.client.submit(_times_out, pure=False), runner, timeout_s=60)
    assert isinstance(error, CotaforgeError), repr(error)
    message = " ".join(str(error).split())
    assert (f"the Dask cluster failed the task at {single.address} during caption (batches 2-3): TimeoutError: "
            "the server did not answer within 30 s") in message
    assert took_s < 30


def _sleepy_batch(run, cfg, batch: int):
    from cotaforge.models import StageReport

    time.sleep(0.5)
    # As a batch that ran 100 s reports itself; the stage's figure must still be the wall clock's.
    return StageReport(stage="sleepy", rows_in=1, rows_out=1, parts_done=1, seconds=100.0)


@pytest.mark.integration
def test_stage_seconds_are_its_wall_time_not_the_sum_of_its_batches(tmp_path, prefect_harness):
    import pyarrow as pa
    from prefect import flow

    from cotaforge.config import load_config
    from cotaforge.store import RunDir, write_table_atomic
    from flows.common import batch_task, map_batches, run_stage

    sleepy_task = batch_task("sleepy-batch", _sleepy_batch)

    @flow(name="cotaforge-sleepy")
    def sleepy_flow(cfg: dict):
        return map_batches("sleepy", sleepy_task, cfg)

    config = load_config(None, [f"run.out_dir={tmp_path}", "run.name=sleepy", "run.workers=4"])
    write_table_atomic(pa.table({"row_index": pa.array(range(4), pa.int64())}), RunDir.for_config(config).manifest_path,
                       {b"cotaforge.batches": b"4"})
    started = time.perf_counter()
    report = run_stage(sleepy_flow, config.to_dict())
    wall_s = time.perf_counter() - started
    assert report.parts_done == 4
    assert 0.5 <= report.seconds <= wall_s < 100.0  # not the batches' 400 s


def test_dask_address_is_checked_and_needs_the_dask_executor():
    from cotaforge.config import load_config
    from cotaforge.errors import ConfigError

    with pytest.raises(ConfigError, match="tcp://HOST:PORT"):
        load_config(None, ["run.executor=dask", "run.dask_address=10.0.0.5:8786"])
    with pytest.raises(ConfigError, match="run.executor=dask"):
        load_config(None, ["run.dask_address=tcp://10.0.0.5:8786"])
    with pytest.raises(ConfigError, match="run.executor"):
        load_config(None, ["run.executor=ray"])
    assert load_config(None, ["run.executor=dask", "run.dask_address=tcp://10.0.0.5:8786"]).run.dask_address


def test_dask_address_flag_implies_the_dask_executor(drums_manifest):
    from cotaforge.cli import _build_config

    cfg = _build_config(None, [drums_manifest], None, None, None, None, dask_address="tcp://127.0.0.1:8786")
    assert (cfg.run.executor, cfg.run.dask_address) == ("dask", "tcp://127.0.0.1:8786")
    assert _build_config(None, [drums_manifest], None, None, None, None).run.executor == "threads"


def test_stages_that_ask_a_teacher_stay_on_threads_in_the_flow_process():
    from prefect.task_runners import ThreadPoolTaskRunner

    from cotaforge.config import load_config
    from flows.executors import WorkerTaskRunner, task_runner

    on_dask = ["run.executor=dask", "run.dask_address=tcp://127.0.0.1:8786"]
    template = load_config(None, on_dask)
    assert all(isinstance(task_runner(stage, template), WorkerTaskRunner)
               for stage in ("ingest", "compose", "caption", "expand", "validate", "balance"))
    assert task_runner("ingest", template).address == "tcp://127.0.0.1:8786"
    llm = load_config(None, [*on_dask, "teacher.backend=openai", "teacher.model=m",
                             "teacher.base_urls=[http://gpu1:8000/v1]",
                             "caption.mode=text_llm", "validate.judge=true"])
    assert all(isinstance(task_runner(stage, llm), ThreadPoolTaskRunner) for stage in ("caption", "expand", "validate"))
    assert isinstance(task_runner("ingest", llm), WorkerTaskRunner)
    assert isinstance(task_runner("ingest", load_config(None, [])), ThreadPoolTaskRunner)
