"""Validate flow: every check of every sample, batch by batch; failures become reject rows.

Run alone with `cotaforge validate CONFIG.yaml` once expand is done.
"""

from __future__ import annotations

from prefect import flow

from cotaforge import progress
from cotaforge.models import StageReport
from cotaforge.stages import validate
from flows.common import batch_task, load, map_batches, run_from_argv

validate_batch_task = batch_task("validate-batch", validate.validate_batch)


@flow(name="cotaforge-validate")
def validate_flow(cfg: dict) -> StageReport:
    _, run = load(cfg)
    progress.start(validate.STAGE, run.part_rows("expand"))
    return map_batches(validate.STAGE, validate_batch_task, cfg, validate.batch_fingerprint)


if __name__ == "__main__":
    run_from_argv(validate_flow)
