"""The Prefect flows under one session-scoped test harness (back-to-back flows on SQLite can lock)."""

import json

import pytest

from cotaforge.stages.publish import dataset_dir

from .conftest import make_config

pytestmark = pytest.mark.integration


def test_pipeline_flow_end_to_end_and_resume(tmp_path, prefect_harness, digits_manifest, drums_manifest, monkeypatch):
    from flows import common
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

    sent: dict[str, list[int]] = {}  # the batches each stage sends to its task runner
    collect = common.collect

    def counting_collect(stage, futures, runs, watch):
        sent.setdefault(stage, []).extend(batch for batches in runs for batch in batches)
        return collect(stage, futures, runs, watch)

    monkeypatch.setattr(common, "collect", counting_collect)
    again = pipeline_flow(cfg.to_dict())
    assert sum(r.parts_done for r in again) == 0
    assert set(sent) == {"ingest", "compose", "caption", "expand", "validate", "balance"}
    assert not any(sent.values())  # every part was current: no task at all
    assert [(r.stage, r.rows_in, r.rows_out) for r in again] == [(r.stage, r.rows_in, r.rows_out) for r in reports]

    sent.clear()
    (cfg.run.out_dir / "runs" / "test" / "caption" / "part-00002.parquet").unlink()
    redone = pipeline_flow(cfg.to_dict())
    assert sent["caption"] == [2] and not any(sent[stage] for stage in sent if stage != "caption")
    assert redone[2].parts_done == 1 and sum(r.parts_done for r in redone) == 1


def test_stage_flow_alone(tmp_path, prefect_harness, digits_manifest):
    from flows.common import with_workers
    from flows.ingest import ingest_flow

    cfg = make_config(tmp_path / "out", [digits_manifest], "run.workers=1").to_dict()
    report = with_workers(ingest_flow, cfg)(cfg)
    assert report.rows_out == 48 and report.parts_done == 3


def test_batch_runs_are_consecutive_and_cover_every_batch_once():
    from flows.common import TASKS_PER_WORKER, batch_runs

    for count, workers in ((469, 2), (17, 2), (4, 2), (1, 8), (1000, 3)):
        runs = batch_runs(range(count), workers)
        assert [b for r in runs for b in r] == list(range(count))
        assert len(runs) <= workers * TASKS_PER_WORKER
        assert len({len(r) for r in runs[:-1]}) <= 1  # equal runs, the last one may be shorter
    assert batch_runs(range(4), 2) == [range(0, 1), range(1, 2), range(2, 3), range(3, 4)]  # a task a batch
    assert len(batch_runs(range(469), 2)) == 16
    assert batch_runs(range(5), 2, per_task=2) == [range(0, 2), range(2, 4), range(4, 5)]
    assert batch_runs([], 2) == []
    # The batches left to do after a partial run: runs never bridge a gap (a task takes first..last).
    assert batch_runs([0, 1, 2, 5, 6, 9], 1, per_task=4) == [range(0, 3), range(5, 7), range(9, 10)]


def test_tasks_of_several_batches_publish_the_same_shards(tmp_path, prefect_harness, digits_manifest):
    import hashlib

    from flows.pipeline import pipeline_flow

    def shards(cfg) -> dict[str, str]:
        data = dataset_dir(cfg) / "data"
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(data.glob("*.parquet"))}

    one = make_config(tmp_path / "one", [digits_manifest], "run.batch_size=4", "run.batches_per_task=1")
    three = make_config(tmp_path / "three", [digits_manifest], "run.batch_size=4", "run.batches_per_task=3")
    reports = {name: pipeline_flow(cfg.to_dict()) for name, cfg in (("one", one), ("three", three))}
    assert reports["one"][0].parts_done == 12  # 48 clips in 12 batches: several tasks of 3 batches
    assert [(r.stage, r.rows_out, r.parts_done) for r in reports["one"]] == \
           [(r.stage, r.rows_out, r.parts_done) for r in reports["three"]]
    assert shards(one) and shards(one) == shards(three)
