"""Expand flow: the teacher turns each batch of captioned clips into chain-of-thought samples.

Run alone with `cotaforge expand CONFIG.yaml` once caption is done.
"""

from __future__ import annotations

from prefect import flow

from cotaforge import progress
from cotaforge.models import StageReport
from cotaforge.stages import expand
from cotaforge.stages.ingest import clip_count
from flows.common import batch_task, load, map_batches, run_from_argv

expand_batch_task = batch_task("expand-batch", expand.expand_batch)


@flow(name="cotaforge-expand")
def expand_flow(cfg: dict) -> StageReport:
    _, run = load(cfg)
    progress.start(expand.STAGE, clip_count(run))
    return map_batches(expand.STAGE, expand_batch_task, cfg, expand.batch_fingerprint)


if __name__ == "__main__":
    run_from_argv(expand_flow)
