"""Publish's peak memory: the resident set of a process that only publishes, at two batch sizes.

    .venv/bin/python benchmarks/bench_publish_memory.py --clips 3000 --batch-sizes 256 2048 --repeat 3

For each batch size, synthetic clips (0.5-1 s, 44.1 kHz stereo WAV, 8 classes; about 8 samples each) go
through the pipeline once (`cotaforge run`, skipped when the run is there). Then, in a fresh Python process
for each measurement, the published version is deleted and `run_publish` writes it again; the process reports
its peak resident set (`resource.getrusage(RUSAGE_SELF).ru_maxrss`), its resident set after the imports and
before publishing, and the wall time; each is measured `--repeat` times and the largest peak is shown. Nothing
else runs in that process: no Prefect server, no other stage.
Run with `PYTHONPATH=<a checkout>/src` to measure another version of publish on the same runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

_MEASURE = r"""
import json, resource, shutil, sys, time
from cotaforge.config import load_config
from cotaforge.stages.publish import dataset_dir, run_publish
from cotaforge.store import RunDir

cfg = load_config(None, [], inputs__manifests=[sys.argv[1]], run__out_dir=sys.argv[2], run__name="bench",
                  run__batch_size=int(sys.argv[3]))
shutil.rmtree(dataset_dir(cfg), ignore_errors=True)
before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
report = run_publish(RunDir.for_config(cfg), cfg)
print(json.dumps({"rows": report.rows_out, "seconds": round(time.perf_counter() - started, 1),
                  "rss_before_mib": round(before_kib / 1024), "peak_rss_mib":
                  round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""


def prepare(work: Path, clips: int, batch_size: int) -> tuple[Path, Path]:
    """The synthetic clips' manifest and a finished run of them at `batch_size` (made once)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_executors import synthesize

    manifest = work / f"clips{clips}" / "manifest.csv"
    if not manifest.exists():
        synthesize(manifest.parent, clips)
    out = work / f"out{clips}-bs{batch_size}"
    if not (out / "runs" / "bench" / "balance").is_dir():
        subprocess.run([str(BIN / "cotaforge"), "run", "--manifest", str(manifest), "--out", str(out), "--name",
                        "bench", "--batch-size", str(batch_size)], check=True, stdout=subprocess.DEVNULL)
    return manifest, out


def measure(manifest: Path, out: Path, batch_size: int) -> dict:
    result = subprocess.run([sys.executable, "-c", _MEASURE, str(manifest), str(out), str(batch_size)],
                            check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return {"batch_size": batch_size, **json.loads(result.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=3000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 2048])
    parser.add_argument("--work", type=Path, default=Path("/tmp/cotaforge-bench-publish"))
    parser.add_argument("--repeat", type=int, default=3, help="measurements per batch size (the peak varies by "
                                                               "~100 MiB with Arrow's reader threads)")
    args = parser.parse_args()
    for batch_size in args.batch_sizes:
        manifest, out = prepare(args.work, args.clips, batch_size)
        runs = [measure(manifest, out, batch_size) for _ in range(args.repeat)]
        peaks = [r["peak_rss_mib"] for r in runs]
        print(json.dumps({"clips": args.clips, **runs[-1], "peak_rss_mib": max(peaks), "peaks_mib": peaks,
                          "seconds": [r["seconds"] for r in runs]}), flush=True)


if __name__ == "__main__":
    main()
