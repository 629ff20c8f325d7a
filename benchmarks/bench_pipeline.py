"""Pipeline benchmarks: ingest CPU per 10-second clip, and validate + balance + publish throughput and memory.

    .venv/bin/python benchmarks/bench_pipeline.py                 # both, default sizes
    .venv/bin/python benchmarks/bench_pipeline.py ingest --clips 60
    .venv/bin/python benchmarks/bench_pipeline.py downstream --samples 20000 100000

Ingest: synthetic 10 s clips (44.1 kHz stereo 16-bit WAV, as many real recordings are) go through the ingest
stage's per-row work (decode, downmix, resample, facts, content hash, WAV encode) in this process; CPU time is
`time.process_time`, one core. Targets: at most 10 ms of CPU per 10 s clip.

Downstream: a real run of the example clips (template teacher) is scaled up by copying its batches with new
ids, then validate, balance and publish run over it in a fresh process per size, which reports samples/s and
its peak resident memory (ru_maxrss). Targets: at least 5,000 samples/s, and peak memory that does not grow
with the number of samples.
"""

from __future__ import annotations

import os

# One thread per process for numeric libraries: figures are per core, and runs parallelise by batch instead.
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def synthetic_clip(seconds: float, rate: int, seed: int) -> np.ndarray:
    """Speech-like stereo audio: voiced bursts with harmonics, pauses and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 110 + 40 * np.sin(2 * np.pi * 0.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
    gate = (np.sin(2 * np.pi * 1.7 * t) > -0.2).astype(float)
    mono = 0.25 * voiced * gate + 0.01 * rng.normal(size=len(t))
    return np.stack([mono, 0.9 * mono], axis=1)


def bench_ingest(clips: int) -> dict:
    from cotaforge.config import RunConfig
    from cotaforge.manifest import ManifestRow
    from cotaforge.stages.ingest import _ingest_row
    from cotaforge.audio import acoustic_facts, decode_audio

    folder = Path(tempfile.mkdtemp(prefix="cotaforge-bench-"))
    try:
        paths = []
        for i in range(clips):
            path = folder / f"clip{i}.wav"
            sf.write(path, synthetic_clip(10.0, 44_100, i), 44_100, subtype="PCM_16")
            paths.append(path)
        cfg = RunConfig()
        rows = [ManifestRow(i, f"bench:{i}", "bench", p.name, str(p), p.name, ["speech"], None) for i, p in enumerate(paths)]
        _ingest_row(rows[0], cfg)  # warm caches (mel filterbank, FFT plans) outside the timing
        started = time.process_time()
        decoded = [decode_audio(p) for p in paths]
        decode_s = time.process_time() - started
        started = time.process_time()
        for d in decoded:
            acoustic_facts(d.samples, d.clipping_ratio)
        facts_s = time.process_time() - started
        started = time.process_time()
        results = [_ingest_row(row, cfg) for row in rows]
        total_s = time.process_time() - started
        if any(not isinstance(r, dict) for r in results):
            raise RuntimeError(f"benchmark clips were rejected: {results}")
        return {"clips": clips, "clip_seconds": 10.0, "source": "44.1 kHz stereo PCM16 WAV",
                "decode_resample_ms": 1000 * decode_s / clips, "facts_ms": 1000 * facts_s / clips,
                "ingest_row_ms": 1000 * total_s / clips}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def build_base_run(out: Path, batch_size: int = 256):
    """A real run of the example clips up to expand (the template teacher)."""
    from cotaforge.config import load_config
    from cotaforge.stages.caption import run_caption
    from cotaforge.stages.expand import run_expand
    from cotaforge.stages.ingest import run_ingest

    cfg = load_config(None, [f"run.out_dir={out}", "run.name=base", f"run.batch_size={batch_size}"],
                      inputs__manifests=[EXAMPLES / "digits" / "manifest.csv", EXAMPLES / "drums" / "manifest.csv"],
                      inputs__group_by="speaker")
    run, _ = run_ingest(cfg)
    run_caption(run, cfg)
    run_expand(run, cfg)
    return cfg, run


def scale_run(base, samples: int, out: Path):
    """Copy the base run's batches with fresh clip, sample and group ids until it holds `samples` samples."""
    from cotaforge.store import RunDir, write_table_atomic

    base_cfg, base_run = base
    cfg = base_cfg.model_copy(deep=True)
    cfg.run.name = f"scaled-{samples}"
    cfg.run.out_dir = out
    run = RunDir.for_config(cfg)
    shutil.rmtree(run.root, ignore_errors=True)
    run.stage_dir("ingest").mkdir(parents=True)
    shutil.copy(base_run.stage_dir("ingest") / "run_stats.json", run.stage_dir("ingest") / "run_stats.json")
    base_batches = base_run.batch_count()
    written, batch = 0, 0
    while written < samples:
        source = batch % base_batches
        suffix = f"{batch:05d}"

        def renamed(table: pa.Table, columns: list[str]) -> pa.Table:
            for column in columns:
                index = table.schema.get_field_index(column)
                table = table.set_column(index, column, pc.binary_join_element_wise(table[column], suffix, ""))
            return table

        clips = renamed(base_run.read_part("ingest", source), ["clip_id", "group_id"])
        samples_table = renamed(base_run.read_part("expand", source), ["clip_id", "group_id", "sample_id"])
        samples_table = samples_table.slice(0, min(samples_table.num_rows, samples - written))
        write_table_atomic(clips, run.part_path("ingest", batch))
        run.write_part("expand", batch, samples_table, f"bench-{batch}", [], _empty_report())
        written += samples_table.num_rows
        batch += 1
    manifest = pa.table({"row_index": pa.array([], pa.int64())})
    write_table_atomic(manifest, run.manifest_path, {b"cotaforge.batches": str(batch).encode()})
    return cfg, run


def _empty_report():
    from cotaforge.models import StageReport

    return StageReport(stage="expand")


def downstream_child(config_json: str) -> None:
    """Runs in a fresh process so its peak memory is its own."""
    from cotaforge.config import RunConfig
    from cotaforge.stages.balance import run_balance
    from cotaforge.stages.publish import run_publish
    from cotaforge.stages.validate import run_validate
    from cotaforge.store import RunDir

    cfg = RunConfig.model_validate(json.loads(config_json))
    run = RunDir.for_config(cfg)
    timings = {}
    started = time.perf_counter()
    cpu = time.process_time()
    reports = {}
    for name, function in (("validate", run_validate), ("balance", run_balance), ("publish", run_publish)):
        t0 = time.perf_counter()
        reports[name] = function(run, cfg)
        timings[f"{name}_s"] = time.perf_counter() - t0
        timings[f"{name}_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    wall = time.perf_counter() - started
    samples = reports["validate"].rows_in
    print(json.dumps({
        "samples": samples, "published": reports["publish"].rows_out, "wall_s": wall,
        "cpu_s": time.process_time() - cpu, "samples_per_s": samples / wall, **timings,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def bench_downstream(sizes: list[int]) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="cotaforge-bench-"))
    try:
        base = build_base_run(work)
        results = []
        for size in sizes:
            cfg, _ = scale_run(base, size, work)
            child = subprocess.run([sys.executable, __file__, "_child", json.dumps(cfg.to_dict())],
                                   capture_output=True, text=True, check=True)
            results.append(json.loads(child.stdout.strip().splitlines()[-1]))
            shutil.rmtree(cfg.run.out_dir / "runs" / cfg.run_name, ignore_errors=True)
            shutil.rmtree(cfg.run.out_dir / "datasets", ignore_errors=True)
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_child":
        downstream_child(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="?", choices=["all", "ingest", "downstream"], default="all")
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--samples", type=int, nargs="+", default=[20_000, 100_000])
    args = parser.parse_args()
    if args.which in ("all", "ingest"):
        r = bench_ingest(args.clips)
        print(f"ingest ({r['clips']} x {r['clip_seconds']:.0f} s clips, {r['source']}), CPU per clip on one core:")
        print(f"  decode + downmix + resample  {r['decode_resample_ms']:6.2f} ms")
        print(f"  acoustic facts               {r['facts_ms']:6.2f} ms")
        print(f"  whole ingest row             {r['ingest_row_ms']:6.2f} ms   (target <= 10 ms)")
    if args.which in ("all", "downstream"):
        print("validate + balance + publish (fresh process per size):")
        for r in bench_downstream(args.samples):
            print(f"  {r['samples']:>7} samples: {r['samples_per_s']:7.0f} samples/s  (validate {r['validate_s']:.1f} s, "
                  f"balance {r['balance_s']:.1f} s, publish {r['publish_s']:.1f} s; cpu {r['cpu_s']:.1f} s)  "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB (after validate {r['validate_peak_rss_mb']:.0f}, balance "
                  f"{r['balance_peak_rss_mb']:.0f})   (target >= 5000 samples/s, flat memory)")


if __name__ == "__main__":
    main()
