"""The review app through FastAPI's TestClient: sign-in, the queue, accept, reject and edit."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from cotaforge.review.app import create_app
from cotaforge.store import RunDir

from .conftest import open_next, sign_in
from .factories import form_value


@pytest.fixture()
def app_client(run: RunDir):
    app = create_app(run.root)
    client = TestClient(app)
    csrf = sign_in(client, app.state.store.add_annotator("ana"))
    yield app, client, csrf
    app.state.store.close()


def test_sample_page_shows_everything_an_annotator_needs(app_client) -> None:
    app, client, csrf = app_client
    sample_id, page = open_next(client, csrf)
    sample = app.state.samples.sample(sample_id)
    for needle in (f'/audio/{sample["clip_id"]}.wav', f'/spectrogram/{sample["clip_id"]}.png', "Acoustic facts",
                   "spectral_centroid_hz", "PLANNING", "CAPTION", "REASONING", "SUMMARY", "RESPONSE",
                   "Keyboard shortcuts", 'id="accept-form"', 'id="reject-form"', 'id="edit-form"'):
        assert needle in page
    assert client.get(f'/audio/{sample["clip_id"]}.wav').content[:4] == b"RIFF"
    assert client.get(f'/spectrogram/{sample["clip_id"]}.png').content[:8] == b"\x89PNG\r\n\x1a\n"


def test_accept_and_reject_are_recorded_and_lead_to_the_next_sample(app_client) -> None:
    app, client, csrf = app_client
    sample_id, page = open_next(client, csrf)
    form = {"csrf_token": csrf, "nonce": form_value(page, "nonce"), "revision": "0"}
    response = client.post(f"/samples/{sample_id}/decision", data={**form, "action": "accept"}, follow_redirects=False)
    assert response.status_code == 303 and sample_id not in response.headers["location"]
    # The same form sent again (a double press) is recorded once.
    client.post(f"/samples/{sample_id}/decision", data={**form, "action": "accept"}, follow_redirects=False)
    second, page = open_next(client, csrf)
    form = {"csrf_token": csrf, "nonce": form_value(page, "nonce"), "revision": "0", "action": "reject"}
    assert client.post(f"/samples/{second}/decision", data={**form, "reason": "not-a-reason"}).status_code == 400
    client.post(f"/samples/{second}/decision", data={**form, "reason": "hallucination", "note": "no such pitch"},
                follow_redirects=False)
    decisions = app.state.store.decisions()
    assert [(d.sample_id, d.action, d.reason, d.note, d.annotator) for d in decisions] == [
        (sample_id, "accept", "", "", "ana"), (second, "reject", "hallucination", "no such pitch", "ana")]
    assert all(d.created_at.endswith("Z") for d in decisions)


def _edit_form(page: str, csrf: str, sample: dict, **changes: str) -> dict:
    form = {"csrf_token": csrf, "nonce": form_value(page, "nonce"), "revision": form_value(page, "revision"),
            "question": sample["question"], "options": "\r\n".join(sample["options"]), "answer": sample["answer"],
            **{s: sample[s] for s in ("planning", "caption", "reasoning", "summary", "response")}}
    return {**form, **changes}


def test_an_edit_is_validated_and_stored_as_a_new_revision(app_client) -> None:
    app, client, csrf = app_client
    sample_id, page = open_next(client, csrf)
    sample = app.state.samples.sample(sample_id)
    new_reasoning = sample["reasoning"] + " The recording is clean and the sound is clear."
    response = client.post(f"/samples/{sample_id}/edit", follow_redirects=False,
                           data=_edit_form(page, csrf, sample, reasoning=new_reasoning, note="clearer"))
    assert response.status_code == 303
    (decision,) = app.state.store.decisions()
    assert (decision.action, decision.revision, decision.note) == ("edit", 1, "clearer")
    fields = app.state.store.revision_fields()[(sample_id, 1)]
    assert fields["reasoning"] == new_reasoning and new_reasoning in fields["assistant_text"]
    assert json.loads(fields["validation"])["passed"] is True
    shown = client.get(f"/samples/{sample_id}").text
    assert "revision 1" in shown and "The recording is clean" in shown


def test_an_edit_that_fails_validation_is_refused_with_the_reasons(app_client) -> None:
    app, client, csrf = app_client
    sample_id, page = open_next(client, csrf)
    sample = app.state.samples.sample(sample_id)
    response = client.post(f"/samples/{sample_id}/edit", data=_edit_form(page, csrf, sample, summary="x"))
    assert response.status_code == 422 and "validator refused it" in response.text
    # Explained in words next to the form, with the code for reference.
    errors = response.text.split('id="edit-errors"', 1)[1].split("</div>", 1)[0]
    assert "a stage is too short; write at least a full sentence (stage_too_short)" in errors
    assert 'id="edit-form"' in response.text.split('id="edit-errors"', 1)[1]
    assert app.state.store.decisions() == []


def test_an_unchanged_edit_counts_as_accept(app_client) -> None:
    app, client, csrf = app_client
    sample_id, page = open_next(client, csrf)
    sample = app.state.samples.sample(sample_id)
    client.post(f"/samples/{sample_id}/edit", data=_edit_form(page, csrf, sample), follow_redirects=False)
    assert [(d.action, d.revision) for d in app.state.store.decisions()] == [("accept", 0)]


def test_progress_page_counts_decisions(app_client) -> None:
    app, client, csrf = app_client
    sample_id, page = open_next(client, csrf)
    client.post(f"/samples/{sample_id}/decision", follow_redirects=False,
                data={"csrf_token": csrf, "nonce": form_value(page, "nonce"), "revision": "0", "action": "accept"})
    progress = client.get("/progress").text
    assert "Per annotator" in progress and "<td>ana</td><td>1</td><td>1</td>" in progress
    assert "Krippendorff" in progress and "Cohen" in progress
