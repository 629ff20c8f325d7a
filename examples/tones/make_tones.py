#!/usr/bin/env python3
"""Write a synthetic, seeded dataset of sounds whose class only the audio decides, with a manifest.

usage: make_tones.py OUTDIR [--groups 30] [--per-class 5] [--seed 0] [--classes low_tone,high_tone,noise,clicks]

Classes (each clip 1.0-2.0 s, 16 kHz mono PCM16):
  low_tone    a sine between 180 and 260 Hz with its second harmonic
  high_tone   a sine between 1.6 and 2.4 kHz
  noise       white noise
  clicks      a train of 2 ms clicks at 3-6 per second
  chirp       a sine sweeping up from 300 Hz to 3 kHz
  hum         a 100-140 Hz square-ish buzz (odd harmonics)

A group is one "recording session": a level (-30 to -6 dBFS RMS) and a background noise floor shared by its
clips, so holding groups out (`group_by: group`) tests clips recorded under unseen conditions. File names
are random hex, so nothing but the sound tells the class. The same arguments write the same bytes.

Then, from the repository root:
  python examples/tones/make_tones.py output/tones
  cotaforge run configs/tones.yaml          # reads output/tones/manifest.csv, publishes output/datasets/tones/v1
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE_HZ = 16_000
Generator = Callable[[np.random.Generator, int], np.ndarray]


def _time(n_samples: int) -> np.ndarray:
    return np.arange(n_samples) / SAMPLE_RATE_HZ


def low_tone(rng: np.random.Generator, n_samples: int) -> np.ndarray:
    f0_hz = rng.uniform(180, 260)
    t = _time(n_samples)
    return np.sin(2 * np.pi * f0_hz * t) + 0.3 * np.sin(4 * np.pi * f0_hz * t + rng.uniform(0, np.pi))


def high_tone(rng: np.random.Generator, n_samples: int) -> np.ndarray:
    return np.sin(2 * np.pi * rng.uniform(1600, 2400) * _time(n_samples))


def noise(rng: np.random.Generator, n_samples: int) -> np.ndarray:
    return rng.normal(0, 1, n_samples)


def clicks(rng: np.random.Generator, n_samples: int) -> np.ndarray:
    out = np.zeros(n_samples)
    period_samples = int(SAMPLE_RATE_HZ / rng.uniform(3, 6))
    click_samples = int(0.002 * SAMPLE_RATE_HZ)
    for start in range(int(rng.integers(0, period_samples)), n_samples - click_samples, period_samples):
        out[start:start + click_samples] = rng.choice([-1.0, 1.0]) * np.hanning(click_samples)
    return out


def chirp(rng: np.random.Generator, n_samples: int) -> np.ndarray:
    t = _time(n_samples)
    start_hz, stop_hz = rng.uniform(250, 350), rng.uniform(2500, 3500)
    rate = (stop_hz - start_hz) / t[-1]
    return np.sin(2 * np.pi * (start_hz * t + rate * t**2 / 2))


def hum(rng: np.random.Generator, n_samples: int) -> np.ndarray:
    f0_hz = rng.uniform(100, 140)
    t = _time(n_samples)
    return sum(np.sin(2 * np.pi * k * f0_hz * t) / k for k in (1, 3, 5, 7))


CLASSES: dict[str, Generator] = {"low_tone": low_tone, "high_tone": high_tone, "noise": noise, "clicks": clicks,
                                 "chirp": chirp, "hum": hum}
LABELS = {"low_tone": "low tone", "high_tone": "high tone", "noise": "white noise", "clicks": "click train",
          "chirp": "rising chirp", "hum": "electrical hum"}


def render_clip(kind: str, rng: np.random.Generator, level_dbfs: float, floor_dbfs: float) -> np.ndarray:
    """One clip of class `kind` at an RMS of `level_dbfs`, over a noise floor at `floor_dbfs`, 10 ms fades."""
    n_samples = int(rng.uniform(1.0, 2.0) * SAMPLE_RATE_HZ)
    signal = CLASSES[kind](rng, n_samples)
    rms = float(np.sqrt(np.mean(signal**2))) or 1.0
    signal = signal / rms * 10 ** (level_dbfs / 20)
    fade = np.ones(n_samples)
    ramp_samples = int(0.01 * SAMPLE_RATE_HZ)
    fade[:ramp_samples] = np.linspace(0, 1, ramp_samples)
    fade[-ramp_samples:] = np.linspace(1, 0, ramp_samples)
    signal = signal * fade + rng.normal(0, 10 ** (floor_dbfs / 20), n_samples)
    return np.clip(signal, -1, 1)


def write_dataset(out_dir: Path, groups: int, per_class: int, seed: int, classes: list[str]) -> Path:
    """Write `out_dir`/audio/*.wav and `out_dir`/manifest.csv (path, label, group); return the manifest."""
    unknown = [kind for kind in classes if kind not in CLASSES]
    if unknown:
        raise ValueError(f"unknown classes {unknown}; choose from {sorted(CLASSES)}")
    (out_dir / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for group in range(groups):
        group_rng = np.random.default_rng([seed, group])
        level_dbfs = float(group_rng.uniform(-30, -6))
        floor_dbfs = float(group_rng.uniform(-70, -50))
        for kind in classes:
            for take in range(per_class):
                rng = np.random.default_rng([seed, group, classes.index(kind), take])
                name = f"audio/{rng.bytes(6).hex()}.wav"
                sf.write(out_dir / name, render_clip(kind, rng, level_dbfs, floor_dbfs), SAMPLE_RATE_HZ,
                         subtype="PCM_16")
                rows.append({"path": name, "label": LABELS[kind], "group": f"session{group:02d}"})
    manifest = out_dir / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "group"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--groups", type=int, default=30)
    parser.add_argument("--per-class", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", default="low_tone,high_tone,noise,clicks",
                        help=f"comma-separated, from {','.join(CLASSES)}")
    args = parser.parse_args()
    manifest = write_dataset(args.out_dir, args.groups, args.per_class, args.seed, args.classes.split(","))
    print(f"wrote {manifest}")


if __name__ == "__main__":
    main()
