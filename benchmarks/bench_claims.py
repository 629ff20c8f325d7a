"""Validate's claim checks (cot_contradicts_facts, cot_contradicts_timeline): CPU per sample, with and without.

    .venv/bin/cotaforge run configs/demo.yaml --out /tmp/demo-out
    .venv/bin/python benchmarks/bench_claims.py /tmp/demo-out/runs/demo [--rounds 5]

Runs `validate_samples` over every batch of a finished run's expand parts (unique texts, unlike the scaled
copies of bench_pipeline.py, whose repeated sentences the claim reader's cache would flatter): on all samples,
then on the single-clip and on the scene samples alone, each with and without the two claim checks; then
`check_claims` alone on each kind, with the per-batch cache validate gives it. Every figure is CPU time
(`time.process_time`, so other work on the machine does not count), the median of `--rounds` rounds, with the
claim reader's global cache of pieces emptied before each round.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def main(run_root: Path, rounds: int) -> None:
    from cotaforge import claims
    from cotaforge.config import load_config
    from cotaforge.stages import validate
    from cotaforge.stages.ingest import load_run_stats, read_clips
    from cotaforge.store import RunDir

    run = RunDir(run_root)
    cfg = load_config(run.root / "config.yaml")
    stats = load_run_stats(run)
    batches = [(run.read_part("expand", b).to_pylist(),
                {c["clip_id"]: c for c in read_clips(run, b, stats).to_pylist()}) for b in range(run.batch_count())]
    kinds = {"all": lambda s: True, "single-clip": lambda s: not s["scene_kind"],
             "scene": lambda s: bool(s["scene_kind"])}

    def median_us(work, count: int) -> float:
        times = []
        for _ in range(rounds):
            claims._piece_measures.cache_clear()
            started = time.process_time()
            work()
            times.append(time.process_time() - started)
        return statistics.median(times) / count * 1e6

    real = validate.check_claims
    for label, keep in kinds.items():
        subset = [([s for s in samples if keep(s)], clips) for samples, clips in batches]
        count = sum(len(samples) for samples, _ in subset)
        if not count:
            continue

        def run_validate() -> None:
            for samples, clips in subset:
                validate.validate_samples(samples, clips, cfg)

        with_checks = median_us(run_validate, count)
        validate.check_claims = lambda sample, clip, cache=None: ([], [])
        try:
            without = median_us(run_validate, count)
        finally:
            validate.check_claims = real

        def run_claims() -> None:
            for samples, clips in subset:
                cache: dict = {}  # one per batch, as validate_samples keeps it
                for sample in samples:
                    real(sample, clips[sample["clip_id"]], cache)

        alone = median_us(run_claims, count)
        print(f"{label} samples ({count}): validate_samples {with_checks:.0f} us of CPU per sample with the claim "
              f"checks, {without:.0f} without (+{(with_checks / without - 1) * 100:.0f} %); check_claims alone "
              f"{alone:.1f} us")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished run's directory, e.g. output/runs/demo")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per figure; the median is reported")
    args = parser.parse_args()
    main(args.run_dir, args.rounds)
