"""Caption flow: one caption per ingested clip, batch by batch (`facts` mode needs no LLM).

Run alone with `cotaforge caption CONFIG.yaml` once ingest is done.
"""

from __future__ import annotations

from prefect import flow

from cotaforge import progress
from cotaforge.models import StageReport
from cotaforge.stages import caption
from cotaforge.stages.ingest import clip_count
from flows.common import batch_task, load, map_batches, run_from_argv

caption_batch_task = batch_task("caption-batch", caption.caption_batch)


@flow(name="cotaforge-caption")
def caption_flow(cfg: dict) -> StageReport:
    _, run = load(cfg)
    progress.start(caption.STAGE, clip_count(run))
    return map_batches(caption.STAGE, caption_batch_task, cfg, caption.batch_fingerprint)


if __name__ == "__main__":
    run_from_argv(caption_flow)
