"""The Prefect flows under one session-scoped test harness (back-to-back flows on SQLite can lock)."""

import json

import pytest

from cotaforge.stages.publish import dataset_dir

from .conftest import make_config

pytestmark = pytest.mark.integration


def test_pipeline_flow_end_to_end_and_resume(tmp_path, prefect_harness, digits_manifest, drums_manifest):
    from flows.pipeline import pipeline_flow

    cfg = make_config(tmp_path / "out", [digits_manifest, drums_manifest], "compose.scenes=12")
    reports = pipeline_flow(cfg.to_dict())
    assert [r.stage for r in reports] == ["ingest", "compose", "caption", "expand", "validate", "balance", "publish"]
    assert reports[0].parts_done == 5 and reports[-1].rows_out > 0
    assert reports[1].rows_in == 12 and reports[2].rows_in == reports[0].rows_out + reports[1].rows_out
    report_md = (cfg.run.out_dir / "runs" / "test" / "report.md").read_text()
    assert "| publish |" in report_md
    manifest = json.loads((dataset_dir(cfg) / "manifest.json").read_text())
    assert sum(manifest["rows"].values()) == reports[-1].rows_out

    again = pipeline_flow(cfg.to_dict())
    assert sum(r.parts_done for r in again) == 0


def test_stage_flow_alone(tmp_path, prefect_harness, digits_manifest):
    from flows.common import with_workers
    from flows.ingest import ingest_flow

    cfg = make_config(tmp_path / "out", [digits_manifest], "run.workers=1").to_dict()
    report = with_workers(ingest_flow, cfg)(cfg)
    assert report.rows_out == 48 and report.parts_done == 3
