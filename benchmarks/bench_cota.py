"""CoTA size end to end: the CLI on 12k, 40k and 120k short clips with the Dask executor, time and memory.

    .venv/bin/python benchmarks/bench_cota.py synth --clips 120000 --dir /tmp/cota-clips   # once, untimed
    .venv/bin/python benchmarks/bench_cota.py run --clips 12000 40000 120000 --dir /tmp/cota-clips

`synth` writes `--clips` tonal clips of 0.5-1 s (16 kHz mono 16-bit WAV, 8 classes, 40 sources) and one
manifest per size asked later (`manifest-<N>.csv`, the first N clips), so the sizes share their audio. It is
not part of any timing.

`run` runs, per size, exactly what a user types, in a subprocess under `/usr/bin/time -v`:

    cotaforge run --manifest manifest-N.csv --out OUT --executor dask --workers 2

(default config: batch size 256, template teacher, compose on: about 7.9 samples a clip after expand), then the
same command again, which must do no work. While each command runs, its process tree is sampled with psutil every 0.5 s and each process's largest
resident set is kept: the CLI's own process, the Prefect API server it starts, each Dask worker. Reported: wall
time, each stage's seconds from the run report (`report.json`), the largest RSS per kind of process, samples
published, and the growth from one size to the next. Targets on the 2-core machine: 120,000 clips in at most
10 minutes, at most 1 GB per process, the no-op re-run under 30 s.
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse
import csv
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("bell", "buzz", "chirp", "click", "drone", "hum", "knock", "whistle")
RATE_HZ = 16_000
CLI = ROOT / ".venv" / "bin" / "cotaforge"


def synthesize(folder: Path, clips: int, sizes: list[int]) -> None:
    """`clips` clips under `folder/audio` (kept when already there) and `manifest-<N>.csv` for every N in sizes."""
    rng = np.random.default_rng(0)
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(clips):
        seconds = rng.uniform(0.5, 1.0)
        label = CLASSES[i % len(CLASSES)]
        path = f"audio/{i // 10_000:02d}/{label}_{i:06d}.wav"
        rows.append({"path": path, "label": label, "source": f"s{i % 40}"})
        target = folder / path
        if target.exists():
            continue
        target.parent.mkdir(exist_ok=True)
        t = np.arange(int(seconds * RATE_HZ)) / RATE_HZ
        f0 = 150 + 90 * CLASSES.index(label) + rng.uniform(-20, 20)
        mono = 0.3 * np.sin(2 * np.pi * f0 * t) * np.minimum(1, 20 * t) + 0.01 * rng.normal(size=len(t))
        sf.write(target, mono, RATE_HZ, subtype="PCM_16")
        if (i + 1) % 10_000 == 0:
            print(f"{i + 1} clips", flush=True)
    for size in sorted(set(sizes) | {clips}):
        if size > clips:
            raise SystemExit(f"--sizes {size} is more than --clips {clips}")
        with (folder / f"manifest-{size}.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["path", "label", "source"])
            writer.writeheader()
            writer.writerows(rows[:size])


def _kind(process: psutil.Process, root_pid: int) -> str:
    """What a process in the CLI's tree is, from its command line."""
    if process.pid == root_pid:
        return "time -v"
    try:
        cmdline = " ".join(process.cmdline())
    except psutil.Error:
        return "gone"
    if "uvicorn" in cmdline or "prefect.server" in cmdline or "server start" in cmdline:
        return "prefect server"
    if "multiprocessing.spawn" in cmdline or "multiprocessing.forkserver" in cmdline:
        return "dask worker"
    if "resource_tracker" in cmdline:
        return "resource tracker"
    if "cotaforge" in cmdline:
        return "cli"
    return cmdline[:60]


def run_measured(command: list[str], log: Path) -> dict:
    """Run `command` under /usr/bin/time -v; wall seconds and the largest RSS of each process in its tree."""
    peaks: dict[int, tuple[str, int]] = {}
    with log.open("w") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(["/usr/bin/time", "-v", *command], stdout=out, stderr=subprocess.STDOUT)
        root = psutil.Process(proc.pid)
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                try:
                    tree = [root, *root.children(recursive=True)]
                except psutil.Error:
                    tree = []
                for process in tree:
                    try:
                        rss = process.memory_info().rss
                    except psutil.Error:
                        continue
                    kind, peak = peaks.get(process.pid, (None, 0))
                    if kind is None:
                        kind = _kind(process, proc.pid)
                    peaks[process.pid] = (kind, max(peak, rss))
                stop.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rc = proc.wait()
        wall_s = time.perf_counter() - started
        stop.set()
        sampler.join()
    text = log.read_text(errors="replace")
    if rc != 0:
        raise SystemExit(f"{' '.join(command)} exited {rc}; see {log}:\n{text[-3000:]}")
    time_v_kb = next((int(line.split(":")[1]) for line in text.splitlines()
                      if "Maximum resident set size" in line), 0)
    by_kind: dict[str, list[int]] = {}
    for kind, peak in peaks.values():
        if kind != "time -v":
            by_kind.setdefault(kind, []).append(peak)
    return {"wall_s": wall_s, "rss_by_kind": {k: sorted(v, reverse=True) for k, v in by_kind.items()},
            "time_v_max_rss_mb": time_v_kb / 1024}


def bench_size(clips_dir: Path, size: int, work: Path, keep: bool) -> dict:
    manifest = clips_dir / f"manifest-{size}.csv"
    if not manifest.exists():
        raise SystemExit(f"no {manifest}: run `bench_cota.py synth --clips {size}` (or more) first")
    out = work / f"out-{size}"
    shutil.rmtree(out, ignore_errors=True)
    command = [str(CLI), "run", "--manifest", str(manifest), "--out", str(out), "--executor", "dask",
               "--workers", "2"]
    print("$", " ".join(command), flush=True)
    first = run_measured(command, work / f"run-{size}.log")
    report = json.loads(next((out / "runs").glob("*/report.json")).read_text())
    stages = {s["stage"]: round(s["seconds"], 1) for s in report["stages"]}
    published = next((s["rows_out"] for s in report["stages"] if s["stage"] == "publish"), 0)
    expand_out = next((s["rows_out"] for s in report["stages"] if s["stage"] == "expand"), 0)
    ingest_out = next((s["rows_out"] for s in report["stages"] if s["stage"] == "ingest"), 0)
    again = run_measured(command, work / f"rerun-{size}.log")
    rerun = json.loads(next((out / "runs").glob("*/report.json")).read_text())
    redone = {s["stage"]: s["parts_done"] for s in rerun["stages"] if s["parts_done"]}
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    row = {"clips": size, "clips_ingested": ingest_out, "samples_expanded": expand_out,
           "samples_per_clip": round(expand_out / max(ingest_out, 1), 2), "published": published,
           "wall_s": round(first["wall_s"], 1), "stages_s": stages,
           "rss_mb": {k: [round(v / 2**20) for v in peaks] for k, peaks in first["rss_by_kind"].items()},
           "time_v_cli_max_rss_mb": round(first["time_v_max_rss_mb"]),
           "rerun_wall_s": round(again["wall_s"], 1), "rerun_parts_done": redone,
           "rerun_rss_mb": {k: [round(v / 2**20) for v in peaks] for k, peaks in again["rss_by_kind"].items()}}
    print(json.dumps(row), flush=True)
    return row


def print_table(rows: list[dict]) -> None:
    print("\n| clips | samples published | wall | growth | re-run | CLI peak | Prefect server peak "
          "| Dask workers' peaks | stages (s) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    previous = None
    for row in rows:
        growth = (f"{row['wall_s'] / previous['wall_s']:.2f}x for {row['clips'] / previous['clips']:.2f}x clips"
                  if previous else "")
        rss = row["rss_mb"]
        workers = ", ".join(f"{v} MB" for v in rss.get("dask worker", []))
        stages = ", ".join(f"{k} {v}" for k, v in row["stages_s"].items())
        print(f"| {row['clips']:,} | {row['published']:,} | {row['wall_s']:.0f} s | {growth} | "
              f"{row['rerun_wall_s']:.1f} s | {max(rss.get('cli', [0]))} MB | "
              f"{max(rss.get('prefect server', [0]))} MB | {workers} | {stages} |")
        previous = row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["synth", "run"])
    parser.add_argument("--clips", type=int, nargs="+", default=[12_000, 40_000, 120_000])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/cota-clips"), help="where the clips are")
    parser.add_argument("--work", type=Path, default=None, help="where runs write (default: DIR/runs)")
    parser.add_argument("--keep", action="store_true", help="keep each size's output")
    args = parser.parse_args()
    if args.what == "synth":
        synthesize(args.dir, max(args.clips), args.clips)
        return
    work = args.work or args.dir / "runs"
    work.mkdir(parents=True, exist_ok=True)
    print("load average (1, 5, 15 min):", " ".join(f"{x:.2f}" for x in os.getloadavg()), flush=True)
    rows = [bench_size(args.dir, size, work, args.keep) for size in args.clips]
    print_table(rows)
    print("load average (1, 5, 15 min):", " ".join(f"{x:.2f}" for x in os.getloadavg()), flush=True)
    (work / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
