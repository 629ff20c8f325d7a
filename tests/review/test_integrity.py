"""Against a running server: nothing an annotator sends can lose work, break publish, decide for others or
slip hidden text into the dataset.

Concurrent edits of one sample save one and refuse the other (409, draft kept); a decision naming a revision
that does not exist is refused, and one already stored is skipped by publish and named in its report; only
samples served to (or opened by) an annotator can be decided, and publish names exactly who rejected; edits
with hidden characters, look-alike letters or too many options are refused.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from markupsafe import escape

from cotaforge.review.db import ReviewStore, default_db_url
from cotaforge.review.samples import RunSamples
from cotaforge.stages.publish import dataset_dir, run_publish
from cotaforge.store import RunDir

from .factories import copy_run, form_value, run_config
from .server import browser_session, start_server, stop_server

TRIES = 8
STAGES = ("planning", "caption", "reasoning", "summary", "response")


@pytest.fixture()
def served(base_run: RunDir, tmp_path: Path):
    """A private run with annotators ana, bo and cy, served by `cotaforge review serve`."""
    run = copy_run(base_run, tmp_path / "output")
    store = ReviewStore(default_db_url(run))
    tokens = {name: store.add_annotator(name) for name in ("ana", "bo", "cy")}
    process, url = start_server(run, tmp_path / "server.log")
    try:
        yield run, url, store, tokens
    finally:
        stop_server(process)
        store.close()


def _serve(client: httpx.Client, csrf: str) -> str:
    """Ask the queue for the next sample; its id."""
    location = client.post("/next", data={"csrf_token": csrf}, follow_redirects=False).headers["location"]
    assert location.startswith("/samples/"), location
    return location.split("/")[-1].split("?")[0]


def _edit_form(page: str, csrf: str, sample: dict, **changes: str) -> dict:
    form = {"csrf_token": csrf, "nonce": form_value(page, "nonce"), "revision": form_value(page, "revision"),
            "question": sample["question"], "options": "\r\n".join(sample["options"]), "answer": sample["answer"],
            **{s: sample[s] for s in STAGES}}
    return {**form, **changes}


def _published(cfg) -> dict[str, dict]:
    folder = dataset_dir(cfg)
    return {r["sample_id"]: r for path in sorted((folder / "data").glob("*.parquet"))
            for r in pq.read_table(path).to_pylist()}


@pytest.mark.integration
def test_concurrent_edits_save_one_and_refuse_the_other_with_the_draft_kept(served) -> None:
    run, url, store, tokens = served
    samples = RunSamples(run)
    ana, ana_csrf = browser_session(url, tokens["ana"])
    bo, bo_csrf = browser_session(url, tokens["bo"])
    outcomes = []
    for attempt in range(TRIES):
        sample_id = _serve(ana, ana_csrf)
        bo.post(f"/samples/{sample_id}/open", data={"csrf_token": bo_csrf}, follow_redirects=False)
        sample = samples.sample(sample_id)
        forms = {}
        for name, client, csrf in (("ana", ana, ana_csrf), ("bo", bo, bo_csrf)):
            page = client.get(f"/samples/{sample_id}").text
            forms[name] = _edit_form(page, csrf, sample,
                                     reasoning=sample["reasoning"] + f" Listener {name} hears it clearly, try {attempt}.")
        barrier = threading.Barrier(2)

        def post(item):
            name, client = item
            barrier.wait()
            return name, client.post(f"/samples/{sample_id}/edit", data=forms[name], follow_redirects=False)

        with ThreadPoolExecutor(2) as pool:
            answers = dict(pool.map(post, [("ana", ana), ("bo", bo)]))
        outcomes.append((sample_id, forms, answers))
        if answers["ana"].status_code != 303:  # the queue would serve her this sample again: hand it back
            ana.post(f"/samples/{sample_id}/skip", data={"csrf_token": ana_csrf}, follow_redirects=False)
    ana.close()
    bo.close()

    revisions = store.revision_fields()
    decisions = store.decisions()
    for sample_id, forms, answers in outcomes:
        statuses = sorted(r.status_code for r in answers.values())
        assert statuses == [303, 409], (sample_id, statuses)
        winner = next(n for n, r in answers.items() if r.status_code == 303)
        loser = next(n for n, r in answers.items() if r.status_code == 409)
        # One revision, the winner's; the loser's text is still on the page they got back.
        assert [rev for sid, rev in revisions if sid == sample_id] == [1]
        assert revisions[(sample_id, 1)]["reasoning"] == forms[winner]["reasoning"]
        assert [(d.annotator, d.action) for d in decisions if d.sample_id == sample_id] == [(winner, "edit")]
        refused = answers[loser].text
        assert "Not saved: someone saved revision 1" in refused
        assert str(escape(forms[loser]["reasoning"])) in refused.split('id="edit-form"', 1)[1]
        assert form_value(refused.split('id="edit-form"', 1)[1], "revision") == "1"  # a resave builds on it


@pytest.mark.integration
def test_a_decision_on_a_revision_that_does_not_exist_is_refused(served) -> None:
    run, url, store, tokens = served
    ana, csrf = browser_session(url, tokens["ana"])
    sample_id = _serve(ana, csrf)
    page = ana.get(f"/samples/{sample_id}").text
    bogus = {"csrf_token": csrf, "nonce": form_value(page, "nonce"), "revision": "99", "action": "accept"}
    answer = ana.post(f"/samples/{sample_id}/decision", data=bogus, follow_redirects=False)
    assert answer.status_code == 400 and "no revision 99" in answer.text
    assert store.decisions() == []
    ana.close()


@pytest.mark.integration
def test_publish_skips_and_names_a_stored_decision_on_a_missing_revision(served) -> None:
    """A decision of that kind already in a database (stored by an older version) must not stop publish."""
    run, _url, store, tokens = served
    ana_id = store.annotator_for_token(tokens["ana"]).id
    samples = RunSamples(run)
    sample_id, other = (e.sample_id for e in samples.entries[:2])
    with store.engine.begin() as conn:
        from cotaforge.review.db import decisions

        conn.execute(decisions.insert().values(nonce="legacy-bogus-revision-0001", sample_id=sample_id,
                                               annotator_id=ana_id, action="accept", reason="", note="",
                                               revision=99, created_at="2026-01-01T00:00:00.000000Z", source="app"))
        conn.execute(decisions.insert().values(nonce="legacy-good-accept-000001", sample_id=other,
                                               annotator_id=ana_id, action="accept", reason="", note="",
                                               revision=0, created_at="2026-01-01T00:00:01.000000Z", source="app"))
    cfg = run_config(run)
    report = run_publish(run, cfg)
    skipped = [n for n in report.notes if "skipped" in n]
    assert len(skipped) == 1 and sample_id in skipped[0] and "revision 99 does not exist" in skipped[0]
    rows = _published(cfg)
    assert rows[sample_id]["review"] == ""  # published as if the bad decision were not there
    assert json.loads(rows[other]["review"])["decision"] == "accept"


@pytest.mark.integration
def test_only_samples_served_to_an_annotator_can_be_decided_and_rejects_name_who_rejected(served) -> None:
    run, url, store, tokens = served
    ana, ana_csrf = browser_session(url, tokens["ana"])
    bo, bo_csrf = browser_session(url, tokens["bo"])
    cy, cy_csrf = browser_session(url, tokens["cy"])
    theirs = _serve(ana, ana_csrf)
    samples = RunSamples(run)
    never_served = next(e.sample_id for e in reversed(samples.entries) if e.sample_id != theirs)
    for sample_id in (theirs, never_served):
        form = {"csrf_token": bo_csrf, "nonce": "x" * 24, "revision": "0", "action": "reject", "reason": "other"}
        answer = bo.post(f"/samples/{sample_id}/decision", data=form, follow_redirects=False)
        assert answer.status_code == 403 and "not served to you" in answer.text
        sample = samples.sample(sample_id)
        edit = {"csrf_token": bo_csrf, "nonce": "y" * 24, "revision": "0", "question": sample["question"],
                "options": "\n".join(sample["options"]), "answer": sample["answer"],
                **{s: sample[s] + (" It is clear." if s == "reasoning" else "") for s in STAGES}}
        assert bo.post(f"/samples/{sample_id}/edit", data=edit, follow_redirects=False).status_code == 403
        page = bo.get(f"/samples/{sample_id}").text  # readable, but offers to open it instead of deciding
        assert 'id="not-served"' in page and 'id="open-form"' in page and 'id="reject-form"' not in page
    assert store.decisions() == []

    # Opened explicitly (from search), a sample may be decided: ana accepts, bo rejects, cy accepts.
    page = ana.get(f"/samples/{theirs}").text
    ana.post(f"/samples/{theirs}/decision", follow_redirects=False, data={
        "csrf_token": ana_csrf, "nonce": form_value(page, "nonce"), "revision": "0", "action": "accept"})
    for client, csrf, action in ((bo, bo_csrf, "reject"), (cy, cy_csrf, "accept")):
        assert client.post(f"/samples/{theirs}/open", data={"csrf_token": csrf},
                           follow_redirects=False).status_code == 303
        page = client.get(f"/samples/{theirs}").text
        answer = client.post(f"/samples/{theirs}/decision", follow_redirects=False, data={
            "csrf_token": csrf, "nonce": form_value(page, "nonce"), "revision": "0", "action": action,
            "reason": "wrong_answer" if action == "reject" else ""})
        assert answer.status_code == 303
    assert sorted((d.annotator, d.action) for d in store.decisions()) == [
        ("ana", "accept"), ("bo", "reject"), ("cy", "accept")]
    for client in (ana, bo, cy):
        client.close()
    cfg = run_config(run)
    run_publish(run, cfg)
    assert theirs not in _published(cfg)
    (listed,) = [r for r in run.rejects("publish").to_pylist() if r["sample_id"] == theirs]
    assert "rejected in review by bo (wrong_answer)" in listed["message"]


HIDDEN_EDITS = {
    "zero-width space": ("reasoning", lambda s: s + " The la\u200bbel is clear."),
    "cyrillic letter": ("reasoning", lambda s: s + " The l\u0430bel is clear."),
    "nul character": ("caption", lambda s: s + " A knock\x00."),
    "rtl override": ("summary", lambda s: "\u202e" + s),
}


@pytest.mark.integration
def test_edits_with_hidden_text_or_too_many_options_are_refused(served) -> None:
    run, url, store, tokens = served
    samples = RunSamples(run)
    ana, csrf = browser_session(url, tokens["ana"])
    multiple_choice = next(e.sample_id for e in samples.entries if e.question_type == "multiple_choice")
    ana.post(f"/samples/{multiple_choice}/open", data={"csrf_token": csrf}, follow_redirects=False)
    sample = samples.sample(multiple_choice)
    n_options = run_config(run).expand.n_options
    assert len(sample["options"]) <= n_options < 9
    for what, (field, change) in HIDDEN_EDITS.items():
        page = ana.get(f"/samples/{multiple_choice}").text
        answer = ana.post(f"/samples/{multiple_choice}/edit", follow_redirects=False,
                          data=_edit_form(page, csrf, sample, **{field: change(sample[field])}))
        assert answer.status_code == 422, what
        errors = answer.text.split('id="edit-errors"', 1)[1].split("</div>", 1)[0]
        assert "not saved" in errors and field in errors, what
    nine = sample["options"] + [f"extra sound {i}" for i in range(9 - len(sample["options"]))]
    page = ana.get(f"/samples/{multiple_choice}").text
    answer = ana.post(f"/samples/{multiple_choice}/edit", follow_redirects=False,
                      data=_edit_form(page, csrf, sample, options="\n".join(nine)))
    errors = answer.text.split('id="edit-errors"', 1)[-1].split("</div>", 1)[0]
    assert answer.status_code == 422 and "more options than" in errors, (answer.status_code, errors[-600:])
    ana.close()
    assert store.revision_fields() == {} and store.decisions() == []
