"""Hostile text is inert, paths cannot be traversed, forms need a CSRF token and pages need a session."""

from __future__ import annotations

import logging
import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cotaforge.review.app import create_app
from cotaforge.store import RunDir

from .conftest import open_next, sign_in
from .factories import HOSTILE, form_value, make_hostile


@pytest.fixture()
def app(run: RunDir):
    app = create_app(run.root)
    yield app
    app.state.store.close()


def _escaped(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&#34;")


def test_hostile_labels_and_teacher_text_render_as_text(run: RunDir) -> None:
    make_hostile(run)
    app = create_app(run.root)
    client = TestClient(app)
    csrf = sign_in(client, app.state.store.add_annotator("ana"))
    location = client.post("/next", data={"csrf_token": csrf}, follow_redirects=False).headers["location"]
    pages = [client.get(location).text, client.get("/").text, client.get("/progress").text]
    for page in pages:
        assert HOSTILE not in page and "<script>alert" not in page and "onerror=alert(1)>" not in page
    sample_page = pages[0]
    assert _escaped(HOSTILE) in sample_page and "&lt;script&gt;alert(document.cookie)&lt;/script&gt;" in sample_page
    # The only scripts are the app's own file, and the policy forbids inline ones.
    assert re.findall(r"<script[^>]*>", sample_page) == ['<script src="/static/review.js" defer>']
    assert "script-src 'self'" in client.get(location).headers["content-security-policy"]
    app.state.store.close()


@pytest.mark.parametrize("path", [
    "/audio/..%2F..%2Fconfig.yaml", "/audio/../../config.yaml", "/audio/%2e%2e%2fmanifest.parquet.wav",
    "/audio/....%2F%2Fetc%2Fpasswd.wav", "/audio/0000000000000000.wav", "/spectrogram/..%2Fconfig.yaml.png",
    "/samples/..%2F..%2Fconfig.yaml", "/samples/%2e%2e", "/static/..%2Fdb.py", "/static/../app.py",
    "/static/%2e%2e/%2e%2e/config.py", "/audio//etc/passwd.wav",
])
def test_no_path_traversal(app: FastAPI, path: str) -> None:
    client = TestClient(app)
    sign_in(client, app.state.store.add_annotator("ana"))
    response = client.get(path, follow_redirects=False)
    assert response.status_code in (400, 404, 405), (path, response.status_code)
    assert b"RIFF" not in response.content[:4] and b"root:" not in response.content
    assert b"import " not in response.content and b"run:" not in response.content


def test_forms_without_a_valid_csrf_token_are_refused(app: FastAPI) -> None:
    store = app.state.store
    client = TestClient(app)
    sample_id, page = open_next(client, sign_in(client, store.add_annotator("ana")))
    form = {"nonce": form_value(page, "nonce"), "revision": "0", "action": "accept"}
    assert client.post(f"/samples/{sample_id}/decision", data=form).status_code == 403
    assert client.post(f"/samples/{sample_id}/decision", data={**form, "csrf_token": "0" * 64}).status_code == 403
    # A token from another browser does not fit this browser's cookie.
    other = TestClient(app)
    other_csrf = form_value(other.get("/login").text, "csrf_token")
    assert client.post(f"/samples/{sample_id}/decision", data={**form, "csrf_token": other_csrf}).status_code == 403
    assert client.post(f"/samples/{sample_id}/edit", data={**form, "question": "x"}).status_code == 403
    assert client.post("/next", data={}).status_code == 403
    assert client.post("/logout", data={}).status_code == 403
    assert other.post("/login", data={"token": store.add_annotator("bo")}).status_code == 403
    assert store.decisions() == []


def test_unsigned_requests_see_and_change_nothing(app: FastAPI) -> None:
    store = app.state.store
    signed = TestClient(app)
    sample_id, _ = open_next(signed, sign_in(signed, store.add_annotator("ana")))
    location = f"/samples/{sample_id}"
    clip_id = app.state.samples.by_id[sample_id].clip_id
    stranger = TestClient(app)
    login_csrf = form_value(stranger.get("/login").text, "csrf_token")
    for path in ("/", location, "/progress", f"/audio/{clip_id}.wav", f"/spectrogram/{clip_id}.png"):
        response = stranger.get(path, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/login", path
    form = {"csrf_token": login_csrf, "nonce": "n" * 24, "revision": "0", "action": "accept"}
    assert stranger.post(f"/samples/{sample_id}/decision", data=form).status_code == 401
    assert stranger.post("/next", data={"csrf_token": login_csrf}).status_code == 401
    stranger.cookies.set("cotaforge_session", "forged-session-id-000000000000")
    assert stranger.get("/", follow_redirects=False).status_code == 303
    assert stranger.post(f"/samples/{sample_id}/decision", data=form).status_code == 401
    bad = stranger.post("/login", data={"token": "wrong-token", "csrf_token": login_csrf})
    assert bad.status_code == 401 and "wrong-token" not in bad.text
    assert store.decisions() == []


def test_tokens_never_reach_the_logs(app: FastAPI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = app.state.store.add_annotator("ana")
    client = TestClient(app)
    sign_in(client, token)
    client.post("/next", data={"csrf_token": form_value(client.get("/").text, "csrf_token")})
    assert token not in caplog.text
    assert token not in client.get("/").text


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sign_in_is_throttled_per_address_without_locking_out_the_token_holder_for_long(app: FastAPI) -> None:
    from cotaforge.review.app import SIGN_IN_FAILURES_PER_ADDRESS, SIGN_IN_WINDOW_S
    from cotaforge.review.throttle import Throttle

    clock = _Clock()
    app.state.failures = Throttle(SIGN_IN_FAILURES_PER_ADDRESS, SIGN_IN_WINDOW_S, clock=clock)
    token = app.state.store.add_annotator("ana")
    client = TestClient(app)
    csrf = form_value(client.get("/login").text, "csrf_token")
    statuses = []
    for i in range(100):
        clock.now += 0.01
        response = client.post("/login", data={"token": f"wrong-{i}", "csrf_token": csrf}, follow_redirects=False)
        statuses.append(response.status_code)
    assert statuses[:SIGN_IN_FAILURES_PER_ADDRESS] == [401] * SIGN_IN_FAILURES_PER_ADDRESS
    assert set(statuses[SIGN_IN_FAILURES_PER_ADDRESS:]) == {429}
    assert 1 <= int(response.headers["retry-after"]) <= SIGN_IN_WINDOW_S
    # While throttled even the right token waits (or guessing would go on); a minute later it signs in.
    assert client.post("/login", data={"token": token, "csrf_token": csrf}, follow_redirects=False).status_code == 429
    clock.now += SIGN_IN_WINDOW_S
    assert client.post("/login", data={"token": token, "csrf_token": csrf}, follow_redirects=False).status_code == 303


def test_one_annotator_signs_in_a_limited_number_of_times_a_minute(app: FastAPI) -> None:
    from cotaforge.review.app import SIGN_INS_PER_ANNOTATOR, SIGN_IN_WINDOW_S
    from cotaforge.review.throttle import Throttle

    clock = _Clock()
    app.state.sign_ins = Throttle(SIGN_INS_PER_ANNOTATOR, SIGN_IN_WINDOW_S, clock=clock)
    token = app.state.store.add_annotator("ana")
    client = TestClient(app)

    def sign_in_again() -> int:  # each sign-in replaces the sign-in form's token: fetch the form anew
        csrf = form_value(client.get("/login").text, "csrf_token")
        return client.post("/login", data={"token": token, "csrf_token": csrf}, follow_redirects=False).status_code

    answers = [sign_in_again() for _ in range(SIGN_INS_PER_ANNOTATOR + 1)]
    assert answers == [303] * SIGN_INS_PER_ANNOTATOR + [429]
    other = TestClient(app)  # another annotator is not affected
    other_csrf = form_value(other.get("/login").text, "csrf_token")
    assert other.post("/login", data={"token": app.state.store.add_annotator("bo"), "csrf_token": other_csrf},
                      follow_redirects=False).status_code == 303
    clock.now += SIGN_IN_WINDOW_S
    assert sign_in_again() == 303


def test_the_csrf_token_is_bound_to_the_session_and_rotates(app: FastAPI) -> None:
    store = app.state.store
    ana_token, bo_token = store.add_annotator("ana"), store.add_annotator("bo")
    ana = TestClient(app)
    login_csrf = form_value(ana.get("/login").text, "csrf_token")
    ana_csrf = sign_in(ana, ana_token)
    assert ana_csrf != login_csrf
    # The sign-in form's token does not work once signed in.
    assert ana.post("/next", data={"csrf_token": login_csrf}, follow_redirects=False).status_code == 403
    bo = TestClient(app)
    bo_csrf = sign_in(bo, bo_token)
    # Another session's token, with this session's cookie, is refused both ways.
    assert ana.post("/next", data={"csrf_token": bo_csrf}, follow_redirects=False).status_code == 403
    assert bo.post("/next", data={"csrf_token": ana_csrf}, follow_redirects=False).status_code == 403
    # Ana's session cookie moved to another browser, with that browser's own sign-in token: refused.
    thief = TestClient(app)
    thief_login_csrf = form_value(thief.get("/login").text, "csrf_token")
    thief.cookies.set("cotaforge_session", ana.cookies.get("cotaforge_session"))
    assert thief.post("/next", data={"csrf_token": thief_login_csrf}, follow_redirects=False).status_code == 403
    assert ana.post("/next", data={"csrf_token": ana_csrf}, follow_redirects=False).status_code == 303
    # Signing out and in again gives a new token; the old one is dead.
    ana.post("/logout", data={"csrf_token": ana_csrf})
    fresh = sign_in(ana, ana_token)
    assert fresh != ana_csrf
    assert ana.post("/next", data={"csrf_token": ana_csrf}, follow_redirects=False).status_code == 403
    assert ana.post("/next", data={"csrf_token": fresh}, follow_redirects=False).status_code == 303


@pytest.mark.integration
def test_a_running_server_throttles_sign_in_and_never_logs_a_login_query(base_run: RunDir, tmp_path) -> None:
    import httpx

    from cotaforge.review.db import ReviewStore, default_db_url

    from .factories import copy_run
    from .server import start_server, stop_server

    run = copy_run(base_run, tmp_path / "output")
    store = ReviewStore(default_db_url(run))
    token = store.add_annotator("ana")
    process, url = start_server(run, tmp_path / "server.log")
    try:
        with httpx.Client(base_url=url) as client:
            assert client.get("/login", params={"token": token}).status_code == 200
            csrf = form_value(client.get("/login").text, "csrf_token")
            statuses = [client.post("/login", data={"token": f"wrong{i}", "csrf_token": csrf},
                                    headers={"X-Forwarded-For": f"10.0.0.{i}"}).status_code for i in range(100)]
            throttled = client.post("/login", data={"token": "wrong", "csrf_token": csrf})
    finally:
        stop_server(process)
        store.close()
    # X-Forwarded-For from a client is not trusted, so a changing header does not reset the count.
    assert statuses.count(401) == 5 and statuses.count(429) == 95
    assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) >= 1
    log = (tmp_path / "server.log").read_text()
    assert token not in log and '"GET /login HTTP/1.1" 200' in log and "/login?" not in log
