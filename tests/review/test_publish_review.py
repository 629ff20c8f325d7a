"""`publish` applies the review: rejected rows gone, edits applied, the `review` column filled."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from cotaforge.review.db import ReviewStore, default_db_url
from cotaforge.decisions import load_decisions
from cotaforge.review.samples import RunSamples, revise_sample, stored_fields
from cotaforge.stages.publish import dataset_dir, publish_fingerprint, run_publish
from cotaforge.store import RunDir

from .factories import run_config


def _published_rows(cfg) -> dict[str, dict]:
    folder = dataset_dir(cfg)
    manifest = json.loads((folder / "manifest.json").read_text())
    rows = [r for shard in manifest["shards"] for r in pq.read_table(folder / shard["path"]).to_pylist()]
    return {row["sample_id"]: row for row in rows}


def test_without_decisions_publish_is_unchanged(run: RunDir) -> None:
    cfg = run_config(run)
    assert load_decisions(run, cfg).outcomes == {}
    assert not (run.root / "review").exists()  # looking for decisions creates no database
    report = run_publish(run, cfg)
    manifest = json.loads((dataset_dir(cfg) / "manifest.json").read_text())
    assert manifest["fingerprint"] == publish_fingerprint(run, cfg)
    rows = _published_rows(cfg)
    assert len(rows) == run.part_rows("balance") == report.rows_out
    assert all(row["review"] == "" for row in rows.values())


def test_decisions_reach_the_published_dataset(run: RunDir) -> None:
    cfg = run_config(run)
    samples = RunSamples(run, cfg)
    store = ReviewStore(default_db_url(run))
    ana = store.annotator_for_token(store.add_annotator("ana")).id
    bo = store.annotator_for_token(store.add_annotator("bo")).id
    accepted, rejected, edited, disputed = (e.sample_id for e in samples.entries[:4])
    store.record_decision(nonce="n1" * 12, sample_id=accepted, annotator_id=ana, action="accept")
    store.record_decision(nonce="n2" * 12, sample_id=rejected, annotator_id=ana, action="reject", reason="other")
    original = samples.sample(edited)
    new_caption = original["caption"] + " A faint hum sits under the sound."
    revised, problems = revise_sample(original, {"caption": new_caption}, samples.clip(original["clip_id"]), cfg)
    assert problems == []
    store.record_decision(nonce="n3" * 12, sample_id=edited, annotator_id=ana, action="edit",
                          edit_fields=stored_fields(revised))
    store.record_decision(nonce="n4" * 12, sample_id=edited, annotator_id=bo, action="accept", revision=1)
    store.record_decision(nonce="n5" * 12, sample_id=disputed, annotator_id=ana, action="accept")
    store.record_decision(nonce="n6" * 12, sample_id=disputed, annotator_id=bo, action="reject", reason="other")

    report = run_publish(run, cfg)
    rows = _published_rows(cfg)
    assert rejected not in rows and disputed not in rows
    assert report.rejected == {"review_rejected": 2} and len(rows) == run.part_rows("balance") - 2
    listed = {r["sample_id"]: r for r in run.rejects("publish").to_pylist()}
    assert set(listed) == {rejected, disputed} and listed[disputed]["reason"] == "review_rejected"
    assert "bo" in listed[disputed]["message"]
    assert json.loads(rows[accepted]["review"])["decision"] == "accept"
    edit_review = json.loads(rows[edited]["review"])
    assert edit_review["decision"] == "edit" and edit_review["revision"] == 1
    assert edit_review["annotators"] == ["ana", "bo"] and edit_review["actions"] == {"ana": "edit", "bo": "accept"}
    assert edit_review["decided_at"].endswith("Z")
    assert rows[edited]["caption"] == new_caption and new_caption in rows[edited]["assistant_text"]
    assert new_caption in rows[edited]["messages"][2]["content"]
    assert sum(1 for row in rows.values() if row["review"]) == 2

    # The same decisions publish nothing new; one more decision republishes.
    assert run_publish(run, cfg).parts_skipped == 1
    store.record_decision(nonce="n7" * 12, sample_id=accepted, annotator_id=bo, action="reject", reason="other")
    assert run_publish(run, cfg).parts_done == 1
    assert accepted not in _published_rows(cfg)
    store.close()
