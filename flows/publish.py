"""Publish flow: write the versioned dataset (shards, manifest, card, plots) and optionally push it.

Run alone with `cotaforge publish CONFIG.yaml` once balance is done.
"""

from __future__ import annotations

from prefect import flow, task

from cotaforge import progress
from cotaforge.models import StageReport
from cotaforge.stages import publish
from flows.common import TASK_OPTIONS, load, run_from_argv


@task(name="publish-dataset", **TASK_OPTIONS)
def publish_task(cfg: dict) -> StageReport:
    config, run = load(cfg)
    return publish.run_publish(run, config)


@flow(name="cotaforge-publish")
def publish_flow(cfg: dict) -> StageReport:
    _, run = load(cfg)
    total = run.part_rows("balance")
    progress.start(publish.STAGE, total)
    # Runs in this process under either executor: one task, so workers would add nothing but a hop.
    report = publish_task(cfg)
    if not report.parts_done:  # the unchanged dataset was kept: no batch went through to move the bar
        progress.advance(publish.STAGE, total)
    return report


if __name__ == "__main__":
    run_from_argv(publish_flow)
