"""Executors: orchestration overhead per batch task, and the CPU stages' speed-up from 1 to 2 worker processes.

    .venv/bin/python benchmarks/bench_executors.py                          # both, default sizes
    .venv/bin/python benchmarks/bench_executors.py overhead --tasks 200
    .venv/bin/python benchmarks/bench_executors.py speedup --clips 2000 --batch-size 250

Overhead: a flow maps a task that does nothing over `--tasks` batches, through the same `map_batches` the
stages use, on the threads executor and on a local Dask cluster, each with 2 workers: once with one batch a
task (`run.batches_per_task=1`) and once as the stages run, with runs of consecutive batches a task. Overhead
per task is the worker time each task costs: wall x workers / tasks (and the plain wall / tasks beside it);
"per task" in the grouped rows is per batch. The same one-batch tasks sent straight to the cluster with
`Client.map` show Dask's own share of it.

Speed-up: synthetic clips (0.5-1 s, 44.1 kHz stereo WAV, 8 classes) go through ingest -> expand once on
threads; then ingest and validate (their parts deleted before each measurement) run again as stage flows on a
local Dask cluster of 1 and of 2 worker processes (one thread each), and on threads, after one untimed ingest
that lets new workers import everything. The figure is each stage's wall time (the summary table's `seconds`).
Target: 2 processes at least 1.7x as fast as 1.
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import argparse
import csv
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CLASSES = ("bell", "buzz", "chirp", "click", "drone", "hum", "knock", "whistle")


def _noop_batch(run, cfg, batch: int):
    from cotaforge.models import StageReport

    return StageReport(stage="noop", rows_in=1, rows_out=1, parts_done=1)


def _config(out: Path, manifest: Path | None, workers: int, executor: str, batch_size: int = 100, *extra: str):
    from cotaforge.config import load_config

    return load_config(None, [f"run.out_dir={out}", "run.name=bench", f"run.batch_size={batch_size}",
                              f"run.workers={workers}", f"run.executor={executor}", "compose.enabled=false", *extra],
                       inputs__manifests=[manifest] if manifest else [])


def bench_overhead(tasks: int, workers: int = 2) -> list[dict]:
    """Seconds per batch task of a task that does nothing, threads against a local Dask cluster."""
    import pyarrow as pa
    from prefect import flow

    from cotaforge.store import RunDir, write_table_atomic
    from flows.common import batch_runs, batch_task, map_batches, run_stage
    from flows.executors import _local_address, shared_cluster

    noop_task = batch_task("noop-batch", _noop_batch)

    @flow(name="cotaforge-noop")
    def noop_flow(cfg: dict):
        return map_batches("noop", noop_task, cfg)

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-exec-") as tmp:
        for executor in ("threads", "dask"):
            config = _config(Path(tmp), None, workers, executor, 100, "run.batches_per_task=1")
            run = RunDir.for_config(config)
            write_table_atomic(pa.table({"row_index": pa.array(range(tasks), pa.int64())}), run.manifest_path,
                               {b"cotaforge.batches": str(tasks).encode()})
            cfg = config.to_dict()
            with shared_cluster(config):
                run_stage(noop_flow, cfg)  # warm: worker imports, Prefect's first calls
                rows.append(_overhead_row(executor, workers, tasks, run_stage(noop_flow, cfg).seconds))
                # The stages' default: runs of consecutive batches, about 8 tasks per worker.
                grouped = _config(Path(tmp), None, workers, executor).to_dict()
                rows.append(_overhead_row(f"{executor}, {len(batch_runs(range(tasks), workers))} tasks of several batches",
                                          workers, tasks, run_stage(noop_flow, grouped).seconds))
                if executor == "dask":
                    # The same tasks straight on the cluster, without Prefect's task engine: Dask's own share.
                    from distributed import Client

                    with Client(_local_address.get(), set_as_default=False) as client:
                        started = time.perf_counter()
                        client.gather(client.map(_noop_batch, [None] * tasks, [None] * tasks, range(tasks),
                                                 pure=False))
                        rows.append(_overhead_row("dask, no Prefect", workers, tasks, time.perf_counter() - started))
    return rows


def _overhead_row(executor: str, workers: int, tasks: int, wall_s: float) -> dict:
    row = {"executor": executor, "workers": workers, "tasks": tasks, "wall_s": round(wall_s, 2),
           "ms_per_task": round(1000 * wall_s / tasks, 1),
           "worker_ms_per_task": round(1000 * wall_s * workers / tasks, 1)}
    print(row, flush=True)
    return row


def synthesize(folder: Path, clips: int) -> Path:
    """`clips` tonal clips of 0.5-1 s as 44.1 kHz stereo WAV, 8 classes, and their manifest."""
    rng = np.random.default_rng(0)
    rate = 44_100
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(clips):
        seconds = rng.uniform(0.5, 1.0)
        t = np.arange(int(seconds * rate)) / rate
        label = CLASSES[i % len(CLASSES)]
        f0 = 150 + 90 * CLASSES.index(label) + rng.uniform(-20, 20)
        mono = 0.3 * np.sin(2 * np.pi * f0 * t) * np.minimum(1, 20 * t) + 0.01 * rng.normal(size=len(t))
        path = f"audio/{label}_{i:06d}.wav"
        sf.write(folder / path, np.stack([mono, 0.8 * mono], axis=1), rate, subtype="PCM_16")
        rows.append({"path": path, "label": label, "source": f"s{i % 40}"})
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "source"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def bench_speedup(clips: int, batch_size: int) -> list[dict]:
    """Wall time of ingest and validate on threads and on 1 and 2 Dask worker processes."""
    from cotaforge.store import RunDir
    from flows.caption import caption_flow
    from flows.common import run_stage
    from flows.executors import shared_cluster
    from flows.expand import expand_flow
    from flows.ingest import ingest_flow
    from flows.validate import validate_flow

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-exec-") as tmp:
        manifest = synthesize(Path(tmp) / "clips", clips)
        out = Path(tmp) / "out"
        base = _config(out, manifest, 2, "threads", batch_size).to_dict()
        for stage_flow in (ingest_flow, caption_flow, expand_flow):
            run_stage(stage_flow, base)
        run = RunDir.for_config(_config(out, manifest, 2, "threads", batch_size))
        for executor, workers in (("dask", 1), ("dask", 2), ("threads", 2)):
            config = _config(out, manifest, workers, executor, batch_size)
            with shared_cluster(config):
                # Untimed first pass: each new worker process imports cotaforge and Prefect at its first task.
                shutil.rmtree(run.stage_dir("ingest"), ignore_errors=True)
                run_stage(ingest_flow, config.to_dict())
                for stage, stage_flow in (("ingest", ingest_flow), ("validate", validate_flow)):
                    shutil.rmtree(run.stage_dir(stage), ignore_errors=True)
                    report = run_stage(stage_flow, config.to_dict())
                    rows.append({"stage": stage, "executor": executor, "workers": workers,
                                 "rows": report.rows_in, "batches": report.parts_done,
                                 "wall_s": round(report.seconds, 2)})
                    print(rows[-1], flush=True)
    for stage in ("ingest", "validate"):
        one, two = (next(r["wall_s"] for r in rows if r["stage"] == stage and r["executor"] == "dask"
                         and r["workers"] == w) for w in (1, 2))
        print(f"{stage}: 2 worker processes are {one / two:.2f}x as fast as 1 ({one:.1f} s -> {two:.1f} s)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="?", choices=["overhead", "speedup", "all"], default="all")
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--clips", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=250)
    args = parser.parse_args()
    from cotaforge.prefect_server import start_prefect_server

    start_prefect_server()  # one local API server for every flow here, gone when this process ends
    print("load average (1, 5, 15 min):", " ".join(f"{x:.2f}" for x in os.getloadavg()), flush=True)
    if args.what in ("overhead", "all"):
        bench_overhead(args.tasks)
    if args.what in ("speedup", "all"):
        bench_speedup(args.clips, args.batch_size)
    print("load average (1, 5, 15 min):", " ".join(f"{x:.2f}" for x in os.getloadavg()), flush=True)


if __name__ == "__main__":
    main()
