"""Balance flow: plan the per-(class, prompt style) targets once, then filter every batch by the plan.

Run alone with `cotaforge balance CONFIG.yaml` once validate is done.
"""

from __future__ import annotations

from prefect import flow, task

from cotaforge import progress
from cotaforge.models import StageReport
from cotaforge.stages import balance
from flows.common import TASK_OPTIONS, batch_task, load, map_batches, run_from_argv

balance_batch_task = batch_task("balance-batch", balance.balance_batch)


@task(name="balance-plan", **TASK_OPTIONS)
def plan_task(cfg: dict) -> dict:
    config, run = load(cfg)
    return balance.plan_balance(run, config)


@flow(name="cotaforge-balance")
def balance_flow(cfg: dict) -> StageReport:
    _, run = load(cfg)
    progress.start(balance.STAGE, run.part_rows("validate"))
    plan = plan_task(cfg)
    report = map_batches(balance.STAGE, balance_batch_task, cfg, balance.batch_fingerprint, plan=plan)
    report.notes = balance.balance_summary(plan)
    return report


if __name__ == "__main__":
    run_from_argv(balance_flow)
