"""The whole pipeline: ingest -> compose -> caption -> expand -> validate -> balance -> publish.

Each stage is its own flow (a subflow here) that maps a task over batches of clips, never over single
clips. Re-running redoes only the batches whose inputs or settings changed. The run report is saved in the
run directory and attached to the flow run as a Markdown artifact.

    cotaforge run --manifest examples/digits/manifest.csv --out output     # what the CLI runs
    python -m flows.pipeline configs/demo.yaml                             # the same, from a config file
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from cotaforge.models import StageReport
from cotaforge.report import write_run_report
from cotaforge.stages.publish import dataset_dir
from flows.balance import balance_flow
from flows.caption import caption_flow
from flows.common import load, run_from_argv, run_stage
from flows.compose import compose_flow
from flows.executors import shared_cluster
from flows.expand import expand_flow
from flows.ingest import ingest_flow
from flows.publish import publish_flow
from flows.validate import validate_flow

STAGE_FLOWS = (ingest_flow, compose_flow, caption_flow, expand_flow, validate_flow, balance_flow, publish_flow)


@flow(name="cotaforge-run")
def pipeline_flow(cfg: dict) -> list[StageReport]:
    config, run = load(cfg)
    with shared_cluster(config):  # a local Dask cluster starts once for every stage, not once per stage
        reports = [run_stage(stage_flow, cfg) for stage_flow in STAGE_FLOWS]
    markdown = write_run_report(run, reports, dataset_dir(config))
    create_markdown_artifact(markdown=markdown, key="cotaforge-run-report",
                             description=f"cotaforge run {config.run_name}")
    get_run_logger().info("run report written to %s", run.root / "report.md")
    return reports


if __name__ == "__main__":
    run_from_argv(pipeline_flow)
