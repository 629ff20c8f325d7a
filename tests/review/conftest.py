"""Fixtures for the review tests: one small real run per session, copied per test; signed-in clients."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cotaforge.store import RunDir

from .factories import build_run, copy_run, form_value

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    run, _ = build_run(tmp_path_factory.mktemp("review-base"))
    return run


@pytest.fixture()
def run(base_run: RunDir, tmp_path: Path) -> RunDir:
    """A private copy of the base run, with its own review database."""
    return copy_run(base_run, tmp_path / "output")


def sign_in(client, token: str) -> str:
    """Sign a TestClient in; return the CSRF token of its forms."""
    page = client.get("/login")
    response = client.post("/login", data={"token": token, "csrf_token": form_value(page.text, "csrf_token")},
                           follow_redirects=False)
    if response.status_code != 303:
        raise ValueError(f"sign-in failed with {response.status_code}")
    return form_value(client.get("/").text, "csrf_token")


def open_next(client, csrf: str) -> tuple[str, str]:
    """Ask the queue for a sample; return its id and its page."""
    response = client.post("/next", data={"csrf_token": csrf}, follow_redirects=False)
    if response.status_code != 303 or not response.headers["location"].startswith("/samples/"):
        raise ValueError(f"the queue answered {response.status_code} {response.headers.get('location')}")
    page = client.get(response.headers["location"])
    return response.headers["location"].split("/")[-1].split("?")[0], page.text


@pytest.fixture(scope="session")
def postgres_url() -> str:
    from .postgres import postgres_server

    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty review database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'review.sqlite'}"
    from .postgres import fresh_database

    return fresh_database(request.getfixturevalue("postgres_url"))
