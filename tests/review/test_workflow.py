"""What an annotation team uses every day: skip, undo, notes, the count left, progress views, search, a
session that expires mid-edit, seeking in audio and the spectrogram's axes."""

from __future__ import annotations

import io
import re

import pytest
from fastapi.testclient import TestClient
from markupsafe import escape

from cotaforge.review.app import create_app
from cotaforge.review.db import now_iso
from cotaforge.review.queue import QueueFilter, queue_state, remaining_for
from cotaforge.store import RunDir

from .conftest import open_next, sign_in
from .factories import form_value


@pytest.fixture()
def app(run: RunDir):
    app = create_app(run.root)
    yield app
    app.state.store.close()


def _client(app, name: str, admin: bool = False) -> tuple[TestClient, str]:
    client = TestClient(app)
    return client, sign_in(client, app.state.store.add_annotator(name, admin=admin or None))


def _annotator_id(app, name: str) -> int:
    return {n: i for i, n in app.state.store.annotator_names().items()}[name]


def _accept(client: TestClient, csrf: str, sample_id: str, note: str = "") -> str:
    page = client.get(f"/samples/{sample_id}").text
    response = client.post(f"/samples/{sample_id}/decision", follow_redirects=False, data={
        "csrf_token": csrf, "nonce": form_value(page, "nonce"), "revision": form_value(page, "revision"),
        "action": "accept", "note": note})
    assert response.status_code == 303, response.text
    return response.headers["location"]


def test_skip_gives_the_sample_to_others_and_it_comes_back_last(app) -> None:
    store, samples = app.state.store, app.state.samples
    client, csrf = _client(app, "ana")
    skipped, _ = open_next(client, csrf)
    ana_id = _annotator_id(app, "ana")
    response = client.post(f"/samples/{skipped}/skip", data={"csrf_token": csrf}, follow_redirects=False)
    assert response.status_code == 303 and skipped not in response.headers["location"]
    assert not any(c.sample_id == skipped and c.annotator_id == ana_id for c in store.claims())
    # Back for the others: its only slot is free again.
    bo = store.annotator_for_token(store.add_annotator("bo")).id
    assert store.try_claim(skipped, bo, target=1, stale_before=now_iso(-3600))
    store.skip(skipped, bo)
    # For ana it comes only after every other sample she can still get.
    served = [response.headers["location"].split("/")[-1]]
    while True:
        _accept(client, csrf, served[-1])
        location = client.post("/next", data={"csrf_token": csrf}, follow_redirects=False).headers["location"]
        if not location.startswith("/samples/"):
            break
        served.append(location.split("/")[-1])
    assert served[-1] == skipped and served.count(skipped) == 1
    assert len(served) == len(samples.entries)


def test_undo_withdraws_the_last_decision_with_a_new_one(app) -> None:
    store = app.state.store
    client, csrf = _client(app, "ana")
    sample_id, _ = open_next(client, csrf)
    following = _accept(client, csrf, sample_id, note="clear")
    page = client.get(following).text
    assert 'id="undo-form"' in page and "Undo accept" in page
    undo = {"csrf_token": csrf, "nonce": form_value(page.split('id="undo-form"', 1)[1], "nonce")}
    response = client.post("/undo", data=undo, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == f"/samples/{sample_id}?undone=1"
    assert client.post("/undo", data=undo, follow_redirects=False).status_code == 409  # the same press twice
    assert [(d.sample_id, d.action) for d in store.decisions()] == [(sample_id, "accept"), (sample_id, "undo")]
    again = client.get(response.headers["location"]).text
    assert "Your decision was withdrawn" in again and 'id="accept-form"' in again
    # The sample is hers again, undecided, and stays reserved for her.
    ana_id = _annotator_id(app, "ana")
    assert [c.done for c in store.claims() if c.sample_id == sample_id and c.annotator_id == ana_id] == [False]


def test_reject_starts_with_no_reason_chosen(app) -> None:
    client, csrf = _client(app, "ana")
    _, page = open_next(client, csrf)
    select = page.split('id="reason"', 1)[1].split("</select>", 1)[0]
    assert "selected" not in select and "required" in page.split('id="reason"', 1)[0][-80:] + select[:80]
    assert select.count("<option") == len(app.state.samples.cfg.review.reject_reasons)


def test_notes_are_shown_and_an_accept_carries_one(app) -> None:
    store = app.state.store
    ana, ana_csrf = _client(app, "ana")
    sample_id, _ = open_next(ana, ana_csrf)
    _accept(ana, ana_csrf, sample_id, note="The <pitch> is right")
    assert store.decisions()[0].note == "The <pitch> is right"
    bo, bo_csrf = _client(app, "bo")
    bo.post(f"/samples/{sample_id}/open", data={"csrf_token": bo_csrf})
    history = bo.get(f"/samples/{sample_id}").text.split('id="history"', 1)[1].split("</ol>", 1)[0]
    assert "ana" in history and "accept" in history and str(escape("The <pitch> is right")) in history


def test_the_count_left_for_an_annotator(app) -> None:
    store, samples = app.state.store, app.state.samples
    client, csrf = _client(app, "ana")
    total = sum(samples.target(e) for e in samples.entries)
    assert f"{len(samples.entries)} left for you" in client.get("/").text  # each sample once per annotator
    sample_id, page = open_next(client, csrf)
    assert f"{len(samples.entries)} left for you" in page  # the one she holds counts
    _accept(client, csrf, sample_id)
    ana = _annotator_id(app, "ana")
    assert remaining_for(samples, store, ana) == len(samples.entries) - 1 < total
    # With a filter, and with bo holding a sample's only slot, against a count done the long way.
    bo, bo_csrf = _client(app, "bo")
    held, _ = open_next(bo, bo_csrf)
    for queue_filter in (QueueFilter(), QueueFilter(class_label="clap"), QueueFilter(question_type="yes_no")):
        state = queue_state(samples, store, ana, queue_filter)
        expected = len(state.resume) + sum(1 for e in samples.entries if queue_filter.matches(e)
                                           and e.sample_id not in state.mine
                                           and state.taken[e.sample_id] < samples.target(e))
        assert remaining_for(samples, store, ana, queue_filter) == expected
    if samples.target(samples.by_id[held]) == 1:
        assert remaining_for(samples, store, ana) == len(samples.entries) - 2


def test_progress_shows_an_annotator_their_own_figures_and_an_admin_everyones(app) -> None:
    ana, ana_csrf = _client(app, "ana")
    bo, bo_csrf = _client(app, "bo")
    boss, _ = _client(app, "boss", admin=True)
    _accept(ana, ana_csrf, open_next(ana, ana_csrf)[0])
    for _ in range(2):
        _accept(bo, bo_csrf, open_next(bo, bo_csrf)[0])
    own = ana.get("/progress").text
    assert "<td>ana</td><td>1</td>" in own and "<td>bo</td>" not in own
    everyone = boss.get("/progress?view=annotators&sort=reviewed&order=desc").text
    table = everyone.split('id="annotators"', 1)[1].split("</table>", 1)[0]
    assert re.findall(r"<tr><td>(\w+)</td>", table) == ["bo", "ana"]
    ascending = boss.get("/progress?sort=reviewed&order=asc").text.split('id="annotators"', 1)[1]
    assert re.findall(r"<tr><td>(\w+)</td>", ascending.split("</table>", 1)[0]) == ["ana", "bo"]
    cells = boss.get("/progress?view=cells&sort=reviewed&order=desc").text
    assert 'id="cells"' in cells and 'id="annotators"' not in cells
    first = re.search(r'id="cells".*?<tbody>\s*<tr>(?:<td>[^<]*</td>){4}<td>(\d+)</td>', cells, re.S)
    assert first and int(first.group(1)) >= 1
    assert boss.get("/progress?sort=<script>").status_code == 200  # unknown columns are ignored
    # Agreement: a sample both decided appears as one shared item of the pair.
    shared = next(d.sample_id for d in app.state.store.decisions() if d.annotator == "ana")
    bo.post(f"/samples/{shared}/open", data={"csrf_token": bo_csrf})
    _accept(bo, bo_csrf, shared)
    assert "<td>ana · bo</td><td>1</td>" in boss.get("/progress").text
    assert "<td>ana · bo</td><td>1</td>" in ana.get("/progress").text  # her own pair


def test_a_session_that_expires_mid_edit_keeps_the_draft(app) -> None:
    store, samples = app.state.store, app.state.samples
    client, csrf = _client(app, "ana")
    sample_id, page = open_next(client, csrf)
    sample = samples.sample(sample_id)
    new_reasoning = sample["reasoning"] + " The onset is sharp and clean."
    form = {"csrf_token": csrf, "nonce": form_value(page, "nonce"), "revision": "0", "question": sample["question"],
            "options": "\n".join(sample["options"]), "answer": sample["answer"],
            **{s: sample[s] for s in ("planning", "caption", "summary", "response")}, "reasoning": new_reasoning}
    token = store.add_annotator("ana", rotate=True)  # rotating ends her sessions, as expiry would
    response = client.post(f"/samples/{sample_id}/edit", data=form, follow_redirects=False)
    assert response.status_code == 401 and "expired while you were editing" in response.text
    assert str(escape(new_reasoning)) in response.text
    relogin = {"token": token, "csrf_token": form_value(response.text, "csrf_token"),
               "return_to": form_value(response.text, "return_to"), "draft_revision": "0",
               **{k: v for k, v in form.items() if k not in ("csrf_token", "nonce", "revision")}}
    back = client.post("/login", data=relogin, follow_redirects=False)
    assert back.status_code == 200 and "Your edit is below, not saved yet" in back.text
    edit_form = back.text.split('id="edit-form"', 1)[1]
    assert str(escape(new_reasoning)) in edit_form
    saved = client.post(f"/samples/{sample_id}/edit", follow_redirects=False, data={
        **form, "csrf_token": form_value(edit_form, "csrf_token"), "nonce": form_value(edit_form, "nonce")})
    assert saved.status_code == 303
    assert store.revision_fields()[(sample_id, 1)]["reasoning"] == new_reasoning
    # An accept sent after the sign-in ran out leads back to its sample once signed in again.
    other, page = open_next(client, form_value(client.get("/").text, "csrf_token"))
    token = store.add_annotator("ana", rotate=True)
    refused = client.post(f"/samples/{other}/decision", follow_redirects=False, data={
        "csrf_token": csrf, "nonce": form_value(page, "nonce"), "revision": "0", "action": "accept"})
    assert refused.status_code == 401 and form_value(refused.text, "return_to") == other
    back = client.post("/login", follow_redirects=False, data={
        "token": token, "csrf_token": form_value(refused.text, "csrf_token"), "return_to": other})
    assert back.status_code == 303 and back.headers["location"] == f"/samples/{other}"


def test_search_by_id_class_or_text(app) -> None:
    samples = app.state.samples
    client, csrf = _client(app, "ana")
    entry = samples.entries[5]
    by_id = client.get(f"/?q={entry.sample_id[:10]}").text
    assert f"/samples/{entry.sample_id}" in by_id.split('id="search-results"', 1)[1]
    by_class = client.get("/?q=CLAP").text.split('id="search-results"', 1)[1]
    found = set(re.findall(r'href="/samples/([0-9a-f]+)"', by_class))
    assert {e.sample_id for e in samples.entries if e.class_label == "clap"} <= found  # the class, any case
    assert found - {e.sample_id for e in samples.entries if e.class_label == "clap"}  # and texts naming it
    phrase = " ".join(samples.sample(entry.sample_id)["caption"].split()[:6])
    by_text = client.get("/", params={"q": phrase.upper()}).text.split('id="search-results"', 1)[1]
    assert f"/samples/{entry.sample_id}" in by_text
    assert "no sample matches" in client.get("/?q=nothing+like+this+anywhere").text
    # Opening a found sample lets her decide it.
    client.post(f"/samples/{entry.sample_id}/open", data={"csrf_token": csrf})
    _accept(client, csrf, entry.sample_id)


def test_audio_is_served_in_ranges_so_players_can_seek(app) -> None:
    client, csrf = _client(app, "ana")
    sample_id, _ = open_next(client, csrf)
    clip = f"/audio/{app.state.samples.by_id[sample_id].clip_id}.wav"
    whole = client.get(clip)
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
    size = len(whole.content)
    part = client.get(clip, headers={"Range": "bytes=100-299"})
    assert part.status_code == 206 and part.content == whole.content[100:300]
    assert part.headers["content-range"] == f"bytes 100-299/{size}" and part.headers["content-length"] == "200"
    tail = client.get(clip, headers={"Range": "bytes=-50"})
    assert tail.status_code == 206 and tail.content == whole.content[-50:]
    rest = client.get(clip, headers={"Range": f"bytes={size - 10}-"})
    assert rest.content == whole.content[-10:]
    beyond = client.get(clip, headers={"Range": f"bytes={size}-{size + 10}"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{size}"
    assert client.get(clip, headers={"Range": "bytes=0-1,5-9"}).status_code == 200  # several ranges: the whole


def test_the_spectrogram_has_axes_and_a_playhead_span(app) -> None:
    from matplotlib.image import imread

    client, csrf = _client(app, "ana")
    sample_id, page = open_next(client, csrf)
    png = client.get(f"/spectrogram/{app.state.samples.by_id[sample_id].clip_id}.png").content
    image = imread(io.BytesIO(png))
    assert image.shape[:2] == (240, 1200)
    # The margin left of the plot (tick labels) and below it (time axis) is white paper, the plot is not.
    left_margin = image[20:180, :60, :3]
    assert left_margin.mean() > 0.85 and image[30:150, 200:1100, :3].mean() < 0.85
    wrap = page.split('id="spectro-wrap"', 1)[1].split(">", 1)[0]
    assert 'data-plot-left="0.07"' in wrap and 'data-plot-right="0.99"' in wrap and "data-duration-s" in wrap
    assert 'id="playhead"' in page
