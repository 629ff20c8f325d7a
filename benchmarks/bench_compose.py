"""Compose benchmark: scenes rendered per second per core, for scenes of 4 events of up to 2 s each.

    .venv/bin/python benchmarks/bench_compose.py                  # 2,000 scenes
    .venv/bin/python benchmarks/bench_compose.py --scenes 5000

The example clips (spoken digits and drum hits, 362 clips) are ingested into a temporary run, the compose
stage collects their audible parts (`compose/sources.parquet`), and a plan of N scenes is written, each 4
events drawn at random from the sources that last at most 2 s, with silent gaps of 0.3-1.0 s and levels in
the default range. `compose_batch` then renders them all as one batch, exactly as a run does: reading the
sources, mixing, measuring acoustic facts, hashing, encoding the WAV and writing the Parquet part. Planning
(`plan_compose`, no audio) is timed too, for the default kinds. Target: at least 200 scenes/s per core.

"Per core" is scenes per CPU-second of this process (`time.process_time`: user plus system time, one thread
for the numeric libraries), which a busy machine inflates far less than wall time; wall-clock figures are
given beside it, with the user/system split and the page faults of the render. On a shared machine compare
runs through the fixed reference workload timed in the same run (`reference_kernel_ms`: the FFT and matrix
work of one 10 s clip's facts, on fixed data, in code the project does not change), and the load average.
"""

from __future__ import annotations

import os

# One thread per process for numeric libraries: figures are per core, and runs parallelise by batch instead.
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
RATE = 16_000


def bench(scenes: int) -> dict:
    from cotaforge.config import load_config
    from cotaforge.scenes import Event, events_from_json, events_to_json
    from cotaforge.stages import compose
    from cotaforge.stages.ingest import run_ingest

    with tempfile.TemporaryDirectory() as tmp:
        manifests = [EXAMPLES / "digits" / "manifest.csv", EXAMPLES / "drums" / "manifest.csv"]
        cfg = load_config(None, [f"run.out_dir={tmp}", "run.name=bench", "run.batch_size=1000", "compose.enabled=true",
                                 f"compose.scenes={scenes}", "compose.max_events=4"], inputs__manifests=manifests)
        run, _ = run_ingest(cfg)
        started = time.process_time()
        plan_report = compose.plan_compose(run, cfg)
        plan_s = time.process_time() - started

        sources = pq.read_table(run.stage_dir("compose") / "sources.parquet",
                                columns=["source", "samples", "level_dbfs", "class_label"]).to_pylist()
        short = [s for s in sources if s["samples"] <= 2 * RATE]
        rng = random.Random(0)
        planned = []
        while len(planned) < scenes:
            # Four events of four classes, one 6.5 dB above the rest; kept when the sequence rules hold.
            picks = rng.sample(short, 4)
            if len({s["class_label"] for s in picks}) < 4:
                continue
            loud = rng.uniform(-24, -12)
            levels = [rng.uniform(-36, loud - 6.5) for _ in picks]
            levels[rng.randrange(4)] = loud
            events, timeline, cursor = [], [], int(rng.uniform(0.1, 0.5) * RATE)
            for source, level in zip(picks, levels):
                events.append({"source": source["source"], "onset": cursor, "gain_db": level - source["level_dbfs"],
                               "fade_in": 0, "fade_out": 0})
                timeline.append(Event(source["class_label"], "", "", "", cursor / RATE,
                                      (cursor + source["samples"]) / RATE, 0.0, level))
                cursor += source["samples"] + int(rng.uniform(0.3, 1.0) * RATE)
            timeline = events_from_json(events_to_json(timeline))  # checked as published, like the planner does
            if compose.scene_problem("sequence", timeline, cfg.compose.min_target_snr_db):
                continue
            number = len(planned)
            planned.append({"number": number, "kind": "sequence", "dataset": "bench", "split": "train",
                            "group_id": f"scene-train-{number}", "batch": 0, "row_index": 10**6 + number,
                            "length": cursor, "events": events, "twin_of": None, "change": None})
        seconds_of_audio = sum(s["length"] for s in planned) / RATE
        (run.stage_dir("compose") / "plan.json").write_text(json.dumps({"fingerprint": f"bench-{scenes}"}))
        (run.stage_dir("compose") / "plan" / "batch-00000.json").write_text(json.dumps(planned))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        started, wall = time.process_time(), time.perf_counter()
        report = compose.compose_batch(run, cfg, 0)
        cpu_s, wall_s = time.process_time() - started, time.perf_counter() - wall
        after = resource.getrusage(resource.RUSAGE_SELF)
    return {"scenes": scenes, "rendered": report.rows_out, "rejected": report.rejected,
            "mean_scene_s": round(seconds_of_audio / scenes, 2), "render_cpu_s": round(cpu_s, 2),
            "render_user_s": round(after.ru_utime - usage.ru_utime, 2),
            "render_system_s": round(after.ru_stime - usage.ru_stime, 2),
            "render_page_faults_per_scene": round((after.ru_minflt - usage.ru_minflt) / max(report.rows_out, 1)),
            "render_wall_s": round(wall_s, 2), "cpu_ms_per_scene": round(1000 * cpu_s / max(report.rows_out, 1), 3),
            "scenes_per_s_per_core": round(report.rows_out / cpu_s, 1),
            "scenes_per_s_wall": round(report.rows_out / wall_s, 1),
            "plan_scenes": plan_report.rows_out, "plan_cpu_s": round(plan_s, 2),
            "planned_scenes_per_s": round(plan_report.rows_out / max(plan_s, 1e-9), 1)}


def reference_kernel_ms(repeats: int = 40) -> float:
    """CPU (ms) of a fixed workload: the FFTs and matrix products of one 10 s clip's facts (626 frames of 1024,
    forward FFT, power, a 513x40 product, inverse FFT), on fixed data, calling numpy and scipy directly. It does
    not change when the project's code does, so it tells how busy the core was while the benchmark ran.
    Run in a child process (`--reference`): its large arrays would otherwise change how the C allocator of the
    measured process hands out memory, and with it the render's page-fault cost."""
    import numpy as np
    import scipy.fft

    rng = np.random.default_rng(0)
    frames = rng.normal(size=(626, 1024)).astype(np.float32)
    weights = rng.random((513, 40)).astype(np.float32)

    def once() -> None:
        spectrum = scipy.fft.rfft(frames, axis=1, workers=1)
        power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
        np.log1p(power @ weights)
        scipy.fft.irfft(power, n=1024, axis=1, workers=1)

    once()
    started = time.process_time()
    for _ in range(repeats):
        once()
    return round((time.process_time() - started) / repeats * 1000, 2)


def facts_ms_per_10s_clip(repeats: int = 20) -> float:
    """CPU (ms) of `acoustic_facts` on one synthetic 10 s clip (a gated 140 Hz tone in light noise), the
    per-clip cost ingest pays."""
    import numpy as np

    from cotaforge.audio import acoustic_facts

    rng = np.random.default_rng(0)
    t = np.arange(10 * RATE) / RATE
    clip = (0.25 * np.sin(2 * np.pi * 140 * t) * (np.sin(2 * np.pi * 1.7 * t) > -0.2)
            + 0.01 * rng.normal(size=len(t))).astype(np.float32)
    acoustic_facts(clip)
    started = time.process_time()
    for _ in range(repeats):
        acoustic_facts(clip)
    return round((time.process_time() - started) / repeats * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=2000)
    parser.add_argument("--reference", action="store_true", help="only print the reference workload's ms")
    args = parser.parse_args()
    if args.reference:
        print(reference_kernel_ms())
        return

    def reference() -> float:
        child = subprocess.run([sys.executable, __file__, "--reference"], capture_output=True, text=True, check=True)
        return float(child.stdout.strip())

    load_before = os.getloadavg()[0]
    reference_before = reference()
    result = bench(args.scenes)
    result["facts_ms_per_10s_clip"] = facts_ms_per_10s_clip()
    result["reference_kernel_ms"] = [reference_before, reference()]  # before and after the render
    result["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(result, indent=1))
    print(f"compose: {result['scenes_per_s_per_core']} scenes/s per core ({result['cpu_ms_per_scene']} ms of CPU "
          f"per scene; {result['scenes_per_s_wall']} scenes/s wall) for 4 events of up to 2 s, mean scene "
          f"{result['mean_scene_s']} s; target >= 200")


if __name__ == "__main__":
    main()
