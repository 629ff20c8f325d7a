"""Label Studio tasks JSON: export, import back, and annotations made in Label Studio itself."""

from __future__ import annotations

import json
from pathlib import Path

from cotaforge.review.db import ReviewStore, default_db_url
from cotaforge.review.decisions import review_outcomes
from cotaforge.review.labelstudio import export_tasks, import_tasks
from cotaforge.review.samples import RunSamples, revise_sample, stored_fields
from cotaforge.store import RunDir

from .factories import run_config


def _outcomes(store: ReviewStore) -> dict:
    return {sid: (o.keep, o.revision, json.loads(o.review)["actions"], o.fields)
            for sid, o in review_outcomes(store.decisions(), store.revision_fields()).items()}


def test_export_then_import_gives_the_same_decisions(run: RunDir, tmp_path: Path) -> None:
    cfg = run_config(run)
    samples = RunSamples(run, cfg)
    store = ReviewStore(default_db_url(run))
    ana = store.annotator_for_token(store.add_annotator("ana")).id
    bo = store.annotator_for_token(store.add_annotator("bo")).id
    first, second, third = (e.sample_id for e in samples.entries[:3])
    store.record_decision(nonce="a" * 24, sample_id=first, annotator_id=ana, action="accept", note="fine")
    store.record_decision(nonce="b" * 24, sample_id=first, annotator_id=bo, action="reject", reason="wrong_answer")
    original = samples.sample(second)
    revised, _ = revise_sample(original, {"planning": original["planning"] + " I will listen twice."},
                               samples.clip(original["clip_id"]), cfg)
    store.record_decision(nonce="c" * 24, sample_id=second, annotator_id=ana, action="edit",
                          edit_fields=stored_fields(revised))
    store.record_decision(nonce="d" * 24, sample_id=second, annotator_id=bo, action="accept", revision=1)
    store.record_decision(nonce="e" * 24, sample_id=third, annotator_id=bo, action="accept")

    out = tmp_path / "tasks.json"
    assert export_tasks(samples, store, out, audio_dir=tmp_path / "audio") == len(samples.entries)
    tasks = json.loads(out.read_text())
    assert tasks[0]["data"]["audio"].startswith("audio/") and out.with_suffix(".xml").read_text().startswith("<View>")
    assert (tmp_path / "audio" / f"{tasks[0]['data']['clip_id']}.wav").read_bytes()[:4] == b"RIFF"

    fresh = ReviewStore(f"sqlite:///{tmp_path / 'fresh.sqlite'}")
    report = import_tasks(samples, fresh, out)
    assert (report.recorded, report.problems) == (5, [])
    assert _outcomes(fresh) == _outcomes(store)
    again = import_tasks(samples, fresh, out)
    assert (again.recorded, again.already) == (0, 5)
    assert import_tasks(samples, store, out).recorded == 0  # the source database already holds them all
    assert len(store.decisions()) == 5 and len(fresh.decisions()) == 5
    store.close()
    fresh.close()


def test_annotations_made_in_label_studio(run: RunDir, tmp_path: Path) -> None:
    cfg = run_config(run)
    samples = RunSamples(run, cfg)
    store = ReviewStore(default_db_url(run))
    out = tmp_path / "tasks.json"
    export_tasks(samples, store, out)
    tasks = json.loads(out.read_text())[:3]
    new_summary = tasks[1]["data"]["summary"] + " Nothing else is heard."

    def choice(name: str, value: str) -> dict:
        return {"from_name": name, "to_name": "audio", "type": "choices", "value": {"choices": [value]}}

    def text(name: str, value: str) -> dict:
        return {"from_name": name, "to_name": "audio", "type": "textarea", "value": {"text": [value]}}

    tasks[0]["annotations"] = [{"id": 11, "completed_by": 7, "created_at": "2025-03-01T10:00:00.123Z",
                                "result": [choice("decision", "reject"), choice("reason", "bad_audio")]}]
    tasks[1]["annotations"] = [{"id": 12, "completed_by": {"email": "li@example.org"},
                                "result": [choice("decision", "edit"), text("edit_summary", new_summary)]}]
    tasks[2]["annotations"] = [{"id": 13, "completed_by": 7, "result": [text("edit_summary", "x")]},
                               {"id": 14, "completed_by": 8, "was_cancelled": True, "result": []}]
    (tmp_path / "ls.json").write_text(json.dumps(tasks))
    report = import_tasks(samples, store, tmp_path / "ls.json")
    assert report.recorded == 2 and len(report.problems) == 1 and "fails validation" in report.problems[0]
    decisions = {d.sample_id: d for d in store.decisions()}
    first = decisions[tasks[0]["data"]["sample_id"]]
    assert (first.annotator, first.action, first.reason, first.created_at) == (
        "labelstudio-7", "reject", "bad_audio", "2025-03-01T10:00:00.123000Z")
    edit = decisions[tasks[1]["data"]["sample_id"]]
    assert (edit.annotator, edit.action, edit.revision, edit.source) == ("li@example.org", "edit", 1, "labelstudio")
    assert store.revision_fields()[(edit.sample_id, 1)]["summary"] == new_summary
    assert store.annotator_for_token("") is None  # imported annotators cannot sign in
    store.close()
