"""Compose flow: plan scenes from the ingested clips (splits first), then render them batch by batch.

Run alone with `cotaforge compose CONFIG.yaml` once ingest is done.
"""

from __future__ import annotations

from prefect import flow, task

from cotaforge import progress
from cotaforge.models import StageReport
from cotaforge.stages import compose
from flows.common import TASK_OPTIONS, batch_task, load, map_batches, run_from_argv

compose_batch_task = batch_task("compose-batch", compose.compose_batch)


@task(name="compose-plan", **TASK_OPTIONS)
def plan(cfg: dict) -> StageReport:
    config, run = load(cfg)
    return compose.plan_compose(run, config)


@flow(name="cotaforge-compose")
def compose_flow(cfg: dict) -> StageReport:
    plan_report = plan(cfg)
    progress.start(compose.STAGE, plan_report.rows_out)
    batches = map_batches(compose.STAGE, compose_batch_task, cfg, compose.batch_fingerprint)
    return compose.summarize_compose(plan_report, [batches])


if __name__ == "__main__":
    run_from_argv(compose_flow)
