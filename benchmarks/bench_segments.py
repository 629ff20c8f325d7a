"""Segments benchmark: CPU to ingest 10 s windows of 10-minute files against 10 s files, WAV and FLAC.

    .venv/bin/python benchmarks/bench_segments.py                       # 3 long files, 12 windows each
    .venv/bin/python benchmarks/bench_segments.py --files 2 --windows 8 --formats FLAC

A window row (`start_s`/`end_s`) is decoded by seeking to its start and reading only its frames, so it should
cost what a 10 s file costs. Both sides run the ingest stage's per-row work (decode the window or file,
downmix, resample to 16 kHz, facts, content hash, WAV encode) in this process on the same audio: the 10 s
files are the very spans the windows cover. CPU time is `time.process_time` (this process, one core), not wall
time, so other jobs on the machine do not count. Target: windows cost at most 1.5x the files.
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import synthetic_clip  # noqa: E402

RATE_HZ = 44_100
LONG_S = 600.0
WINDOW_S = 10.0


def _time_rows(rows, cfg, rounds: int) -> float:
    """Median over rounds of the CPU seconds per row of the ingest row function."""
    from cotaforge.stages.ingest import _ingest_row

    per_round = []
    for _ in range(rounds):
        started = time.process_time()
        results = [_ingest_row(row, cfg) for row in rows]
        per_round.append((time.process_time() - started) / len(rows))
        if any(not isinstance(r, dict) for r in results):
            raise RuntimeError(f"benchmark rows were rejected: {[r for r in results if not isinstance(r, dict)][:1]}")
    return float(np.median(per_round))


def bench(fmt: str, files: int, windows: int, rounds: int, folder: Path) -> dict:
    from cotaforge.config import RunConfig
    from cotaforge.manifest import ManifestRow

    cfg = RunConfig()
    rng = np.random.default_rng(0)
    ext = fmt.lower()
    window_rows, file_rows = [], []
    for f in range(files):
        audio = synthetic_clip(LONG_S, RATE_HZ, 1000 + f)  # 10 minutes, 44.1 kHz stereo
        long_path = folder / f"long{f}.{ext}"
        sf.write(long_path, audio, RATE_HZ, format=fmt, subtype="PCM_16")
        for w in range(windows):
            start_s = round(float(rng.uniform(0, LONG_S - WINDOW_S)), 3)
            n = len(window_rows)
            window_rows.append(ManifestRow(n, f"bench:{n}", "bench", long_path.name, str(long_path), f"w{n}",
                                           ["speech"], None, start_s=start_s, end_s=start_s + WINDOW_S))
            short_path = folder / f"short{n}.{ext}"
            first = round(start_s * RATE_HZ)
            sf.write(short_path, audio[first:first + round(WINDOW_S * RATE_HZ)], RATE_HZ, format=fmt, subtype="PCM_16")
            file_rows.append(ManifestRow(n, f"bench:{n}", "bench", short_path.name, str(short_path), f"f{n}",
                                         ["speech"], None))
        del audio
    from cotaforge.stages.ingest import _ingest_row

    _ingest_row(file_rows[0], cfg)  # warm caches (mel filterbank, FFT plans) outside the timing
    file_s = _time_rows(file_rows, cfg, rounds)
    window_s = _time_rows(window_rows, cfg, rounds)
    return {"format": fmt, "long_files": files, "windows": len(window_rows),
            "long_file_mb": round(sum(p.stat().st_size for p in folder.glob(f"long*.{ext}")) / files / 1e6, 1),
            "file_ms": round(1000 * file_s, 2), "window_ms": round(1000 * window_s, 2),
            "ratio": round(window_s / file_s, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=3, help="10-minute files per format")
    parser.add_argument("--windows", type=int, default=12, help="10 s windows per file (and as many 10 s files)")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds; the median is reported")
    parser.add_argument("--formats", nargs="+", default=["WAV", "FLAC"], choices=["WAV", "FLAC"])
    parser.add_argument("--max-ratio", type=float, default=1.5, help="exit 1 when a window costs more than this")
    args = parser.parse_args()
    over = []
    for fmt in args.formats:
        folder = Path(tempfile.mkdtemp(prefix="cotaforge-segments-"))
        try:
            result = bench(fmt, args.files, args.windows, args.rounds, folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        print(json.dumps(result), flush=True)
        if result["ratio"] > args.max_ratio:
            over.append(f"{fmt}: {result['ratio']}x")
    if over:
        sys.exit(f"windows cost more than {args.max_ratio}x the files: {', '.join(over)}")


if __name__ == "__main__":
    main()
