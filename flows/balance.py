"""Balance flow: plan the per-(class, prompt style) targets once, then filter every batch by the plan.

Run alone with `cotaforge balance CONFIG.yaml` once validate is done.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task, unmapped

from cotaforge import progress
from cotaforge.config import RunConfig
from cotaforge.models import StageReport
from cotaforge.stages import balance
from cotaforge.store import RunDir
from flows.common import TASK_OPTIONS, collect, load, run_from_argv


@task(name="balance-plan", **TASK_OPTIONS)
def plan_task(cfg: dict) -> dict:
    config, run = load(cfg)
    return balance.plan_balance(run, config)


@task(name="balance-batch", task_run_name="balance-batch-{batch}", **TASK_OPTIONS)
def balance_batch_task(run_root: str, cfg: dict, batch: int, plan: dict) -> StageReport:
    return balance.balance_batch(RunDir(Path(run_root)), RunConfig.model_validate(cfg), batch, plan)


@flow(name="cotaforge-balance")
def balance_flow(cfg: dict) -> StageReport:
    _, run = load(cfg)
    progress.start(balance.STAGE, run.part_rows("validate"))
    plan = plan_task(cfg)
    futures = balance_batch_task.map(unmapped(str(run.root)), unmapped(cfg), list(range(run.batch_count())),
                                     unmapped(plan))
    report = collect(balance.STAGE, futures)
    report.notes = balance.balance_summary(plan)
    return report


if __name__ == "__main__":
    run_from_argv(balance_flow)
