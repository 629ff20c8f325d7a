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
