"""The run folder's human-readable results: the loss curve (PNG) from metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(metrics_path: Path) -> tuple[list[dict], list[dict]]:
    """Training-step records and validation records of a run's metrics.jsonl."""
    records = [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines() if line]
    return [r for r in records if "loss" in r], [r for r in records if "val_loss_per_token" in r]


def plot_loss_curve(metrics_path: Path, out_path: Path) -> Path:
    """Training loss per step (both averages) and validation loss, on one plot."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on training machines
    import matplotlib.pyplot as plt

    train, validation = read_metrics(metrics_path)
    if not train:
        raise ValueError(f"{metrics_path} has no training steps yet; train before plotting")
    figure, axes = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in train]
    axes.plot(steps, [r["loss_per_token"] for r in train], label="train, per token", linewidth=1)
    axes.plot(steps, [r["loss_per_sample"] for r in train], label="train, per sample", linewidth=1, alpha=0.7)
    if validation:
        val_steps = [r["step"] for r in validation]
        axes.plot(val_steps, [r["val_loss_per_token"] for r in validation], "o-", label="validation, per token")
        axes.plot(val_steps, [r["val_loss_per_sample"] for r in validation], "s--", label="validation, per sample")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("cross-entropy on answer tokens (nats)")
    axes.set_yscale("log")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(out_path, dpi=120)
    plt.close(figure)
    return out_path
