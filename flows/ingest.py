"""Ingest flow: read the manifests, decode and measure every clip batch by batch, then drop duplicates.

Run alone with `cotaforge ingest --manifest M --out DIR` (or `python -m flows.ingest CONFIG.yaml`).
"""

from __future__ import annotations

from prefect import flow, task

from cotaforge import progress
from cotaforge.models import StageReport
from cotaforge.stages import ingest
from flows.common import TASK_OPTIONS, batch_task, load, map_batches, run_from_argv

ingest_batch_task = batch_task("ingest-batch", ingest.ingest_batch)


@task(name="ingest-prepare", **TASK_OPTIONS)
def prepare(cfg: dict) -> int:
    config, _ = load(cfg)
    run = ingest.prepare_ingest(config)
    return run.manifest_rows()


@task(name="ingest-finalize", **TASK_OPTIONS)
def finalize(cfg: dict) -> StageReport:
    config, run = load(cfg)
    return ingest.finalize_ingest(run, config)


@flow(name="cotaforge-ingest")
def ingest_flow(cfg: dict) -> StageReport:
    progress.start(ingest.STAGE, prepare(cfg))
    batches = map_batches(ingest.STAGE, ingest_batch_task, cfg, ingest.batch_fingerprint)
    return ingest.summarize_ingest([batches], finalize(cfg))


if __name__ == "__main__":
    run_from_argv(ingest_flow)
