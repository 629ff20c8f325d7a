"""Label Studio tasks JSON: export, import back, and annotations made in Label Studio itself."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from cotaforge.review.db import ReviewStore, default_db_url
from cotaforge.decisions import review_outcomes
from cotaforge.review.labelstudio import export_tasks, import_tasks
from cotaforge.review.samples import RunSamples, revise_sample, stored_fields
from cotaforge.store import RunDir

from .factories import run_config


def _outcomes(store: ReviewStore) -> dict:
    return {sid: (o.keep, o.revision, json.loads(o.review)["actions"], o.fields)
            for sid, o in review_outcomes(store.decisions(), store.revision_fields()).outcomes.items()}


def test_export_then_import_gives_the_same_decisions(run: RunDir, tmp_path: Path) -> None:
    cfg = run_config(run)
    samples = RunSamples(run, cfg)
    store = ReviewStore(default_db_url(run))
    ana = store.annotator_for_token(store.add_annotator("ana", email="ana.k@lab.example.org")).id
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
    with pytest.raises(ValueError, match="bo has none"):  # Label Studio could not tell who bo is
        export_tasks(samples, store, out)
    assert not out.exists()
    assert export_tasks(samples, store, out, audio_dir=tmp_path / "audio",
                        email_domain="example.org") == len(samples.entries)
    tasks = json.loads(out.read_text())
    by_email = {a["completed_by"]["email"] for t in tasks for a in t["annotations"]}
    assert by_email == {"ana.k@lab.example.org", "bo@example.org"}
    assert all(a["ground_truth"] is False for t in tasks for a in t["annotations"])
    assert tasks[0]["data"]["audio"].startswith("audio/") and out.with_suffix(".xml").read_text().startswith("<View>")
    assert (tmp_path / "audio" / f"{tasks[0]['data']['clip_id']}.wav").read_bytes()[:4] == b"RIFF"

    fresh = ReviewStore(f"sqlite:///{tmp_path / 'fresh.sqlite'}")
    # An e-mail maps back to the annotator who has it.
    fresh.add_annotator("ana", email="ana.k@lab.example.org")
    fresh.add_annotator("bo", email="bo@example.org")
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


def _annotated_export(run: RunDir, tmp_path: Path) -> tuple[list[dict], str]:
    """An export with an accept (with a note), a reject (with a reason) and an edit; its tasks and config."""
    cfg = run_config(run)
    samples = RunSamples(run, cfg)
    store = ReviewStore(default_db_url(run))
    ana = store.annotator_for_token(store.add_annotator("ana", email="ana@example.org")).id
    first, second, third = (e.sample_id for e in samples.entries[:3])
    store.record_decision(nonce="a" * 24, sample_id=first, annotator_id=ana, action="accept", note="clear")
    store.record_decision(nonce="b" * 24, sample_id=second, annotator_id=ana, action="reject", reason="bad_audio")
    original = samples.sample(third)
    revised, _ = revise_sample(original, {"caption": original["caption"] + " It is brief."},
                               samples.clip(original["clip_id"]), cfg)
    store.record_decision(nonce="c" * 24, sample_id=third, annotator_id=ana, action="edit",
                          edit_fields=stored_fields(revised))
    out = tmp_path / "tasks.json"
    export_tasks(samples, store, out)
    store.close()
    return json.loads(out.read_text()), out.with_suffix(".xml").read_text()


def test_the_export_has_the_fields_label_studio_imports(run: RunDir, tmp_path: Path) -> None:
    """Checked against Label Studio's documented import format and the labeling config written beside it."""
    tasks, config = _annotated_export(run, tmp_path)
    view = ElementTree.fromstring(config)
    controls = {c.get("name"): c for c in view if c.get("toName")}
    objects = {o.get("name"): o for o in view if o.get("value", "").startswith("$")}
    kinds = {"Choices": "choices", "TextArea": "textarea", "Number": "number"}
    annotated = [t for t in tasks if t["annotations"]]
    assert len(annotated) == 3
    for task in tasks:
        assert set(task) == {"id", "data", "annotations"} and isinstance(task["id"], int)
        # Every $variable the config shows is in the task's data.
        assert {o.get("value")[1:] for o in objects.values()} <= set(task["data"])
    for task in annotated:
        (annotation,) = task["annotations"]
        assert annotation["completed_by"] == {"email": "ana@example.org"}
        assert annotation["ground_truth"] is False and annotation["was_cancelled"] is False
        assert isinstance(annotation["id"], int)
        for item in annotation["result"]:
            control = controls[item["from_name"]]
            assert item["to_name"] == control.get("toName") and item["to_name"] in objects
            assert item["type"] == kinds[control.tag]
            if item["type"] == "choices":
                allowed = {c.get("value") for c in control}
                assert set(item["value"]["choices"]) <= allowed and len(item["value"]["choices"]) == 1
            elif item["type"] == "textarea":
                assert all(isinstance(t, str) for t in item["value"]["text"])
            else:
                assert isinstance(item["value"]["number"], int)


def test_the_export_validates_against_label_studio_sdk_models(run: RunDir, tmp_path: Path) -> None:
    """label-studio-sdk's own task and annotation models and its labeling-config validator accept the export."""
    interface = pytest.importorskip("label_studio_sdk.label_interface")
    from label_studio_sdk.types.annotation_request import AnnotationRequest
    from label_studio_sdk.types.import_api_request import ImportApiRequest

    tasks, config = _annotated_export(run, tmp_path)
    labeling = interface.LabelInterface(config)
    for task in tasks:
        # The SDK types `completed_by` as a user id (the REST API's form); a JSON import also takes
        # {"email": ...}, which Label Studio resolves to the user with that e-mail.
        annotations = [{k: v for k, v in a.items() if k != "completed_by"} for a in task["annotations"]]
        parsed = ImportApiRequest.model_validate({**task, "annotations": annotations})
        assert parsed.data == task["data"]
        for annotation in annotations:
            assert AnnotationRequest.model_validate(annotation).result == annotation["result"]
            assert labeling.validate_prediction(annotation, return_errors=True) == [], annotation["result"]
