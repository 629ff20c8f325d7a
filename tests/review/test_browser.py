"""A real browser (Playwright driving Debian's chromium, headless) reviews with the keyboard shortcuts.

It signs in, accepts, rejects and edits with the keys listed on the page, then finds the decisions in the
database and in the published dataset. The sample page's screenshot is saved in the test's folder and
copied to output/review-screenshot.png. Skips where chromium or playwright is missing (never runs
`playwright install`: install Debian's `chromium` instead).
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cotaforge.review.db import ReviewStore, default_db_url
from cotaforge.stages.publish import dataset_dir, run_publish
from cotaforge.store import RunDir

from .factories import copy_run, run_config
from .server import start_server, stop_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOT_COPY = Path(__file__).resolve().parents[2] / "output" / "review-screenshot.png"


@contextmanager
def signed_in_page(run: RunDir, tmp_path: Path, viewport: dict):
    """A chromium page signed in as annotator "ana" on a running review server; closed and stopped after."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    store = ReviewStore(default_db_url(run))
    token = store.add_annotator("ana")
    store.close()
    process, url = start_server(run, tmp_path / "server.log")
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport=viewport)
            page.set_default_timeout(20_000)
            page.goto(f"{url}/login")
            page.fill("#token", token)
            page.click("button[type=submit]")
            page.wait_for_url(f"{url}/")
            yield page, url
            browser.close()
    finally:
        stop_server(process)


@pytest.mark.slow
@pytest.mark.integration
def test_review_in_a_browser_with_the_keyboard(base_run: RunDir, tmp_path: Path) -> None:
    run = copy_run(base_run, tmp_path / "output")
    with signed_in_page(run, tmp_path, {"width": 1280, "height": 1000}) as (page, _):
        store = ReviewStore(default_db_url(run))
        page.keyboard.press("n")  # the next sample, from the start page
        page.wait_for_url("**/samples/*")
        page.wait_for_function("document.getElementById('spectrogram').naturalWidth > 0")
        page.wait_for_function("document.getElementById('player').readyState >= 1")
        assert "Keyboard shortcuts" in page.inner_text("#shortcuts")
        screenshot = tmp_path / "review-sample.png"
        page.screenshot(path=str(screenshot), full_page=True)
        SCREENSHOT_COPY.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, SCREENSHOT_COPY)

        accepted = page.url.rsplit("/", 1)[-1]
        page.keyboard.press("a")
        page.wait_for_url(lambda u: accepted not in u)

        rejected = page.url.rsplit("/", 1)[-1]
        page.keyboard.press("r")
        assert page.evaluate("document.activeElement.id") == "reason"
        page.keyboard.press("2")
        page.keyboard.press("Enter")
        page.wait_for_url(lambda u: rejected not in u)

        edited = page.url.rsplit("/", 1)[-1]
        page.keyboard.press("e")
        assert page.evaluate("document.activeElement.id") == "edit-question"
        new_reasoning = page.input_value("#edit-reasoning") + " The recording is clean and the sound is clear."
        page.fill("#edit-reasoning", new_reasoning)
        page.keyboard.press("Control+Enter")
        page.wait_for_url(lambda u: edited not in u)

        page.keyboard.press("?")
        assert page.evaluate("document.getElementById('shortcuts').classList.contains('hidden')")

    decisions = {d.sample_id: d for d in store.decisions()}
    assert {s: (d.action, d.annotator) for s, d in decisions.items()} == {
        accepted: ("accept", "ana"), rejected: ("reject", "ana"), edited: ("edit", "ana")}
    assert decisions[rejected].reason == run_config(run).review.reject_reasons[1]
    assert store.revision_fields()[(edited, 1)]["reasoning"] == new_reasoning
    store.close()

    cfg = run_config(run)
    run_publish(run, cfg)
    folder = dataset_dir(cfg)
    rows = {r["sample_id"]: r for path in sorted((folder / "data").glob("*.parquet"))
            for r in pq.read_table(path).to_pylist()}
    assert rejected not in rows
    assert json.loads(rows[accepted]["review"])["decision"] == "accept"
    assert rows[edited]["reasoning"] == new_reasoning and json.loads(rows[edited]["review"])["revision"] == 1
    assert screenshot.stat().st_size > 10_000


SMALL_SCREEN = {"width": 1366, "height": 768}


def _wait_until(page, expression: str, timeout_s: float = 10.0) -> None:
    """Poll a JavaScript expression from Python: the page's CSP forbids the eval Playwright's own polling uses."""
    import time

    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout_s} s: {expression}")
        page.wait_for_timeout(100)


SMALL_SCREENSHOT_COPY = SCREENSHOT_COPY.with_name("review-1366x768.png")


@pytest.mark.slow
@pytest.mark.integration
def test_a_laptop_screen_skip_undo_action_bar_and_playhead(base_run: RunDir, tmp_path: Path) -> None:
    """At 1366x768: the action bar is in view without scrolling; r opens the reasons with none chosen and
    Enter does nothing until one is; s skips; u undoes; the playhead follows the audio's time."""
    run = copy_run(base_run, tmp_path / "output")
    with signed_in_page(run, tmp_path, SMALL_SCREEN) as (page, _):
        store = ReviewStore(default_db_url(run))
        page.keyboard.press("n")
        page.wait_for_url("**/samples/*")
        page.wait_for_function("document.getElementById('spectrogram').naturalWidth > 0")
        page.wait_for_function("document.getElementById('player').duration > 0")

        # Accept, Reject and Edit are on screen at once, with the page not scrolled.
        assert page.evaluate("window.scrollY") == 0
        for selector in ("#accept-form button", "#reject-panel summary", "#edit-button", "#skip-form button"):
            box = page.locator(selector).bounding_box()
            assert box and 0 <= box["y"] and box["y"] + box["height"] <= SMALL_SCREEN["height"], (selector, box)
            assert box["x"] + box["width"] <= SMALL_SCREEN["width"], (selector, box)
        # The spectrogram is drawn with its axes: the image is the plotted figure, wider than tall.
        assert page.evaluate("document.getElementById('spectrogram').naturalWidth") == 1200
        page.evaluate("(() => { const p = document.getElementById('player'); p.currentTime = p.duration / 2; })()")
        _wait_until(page, "!document.getElementById('playhead').hidden")
        _wait_until(page, "Math.abs(parseFloat(document.getElementById('playhead').style.left) - "
                          "document.getElementById('spectrogram').clientWidth * (0.07 + 0.5 * 0.92)) < 3")
        screenshot = tmp_path / "review-1366x768.png"
        page.screenshot(path=str(screenshot))
        shutil.copyfile(screenshot, SMALL_SCREENSHOT_COPY)

        # r: the reasons open with none chosen; Enter does nothing until one is.
        first = page.url.rsplit("/", 1)[-1]
        page.keyboard.press("r")
        assert page.evaluate("document.activeElement.id") == "reason"
        assert page.evaluate("document.getElementById('reason').selectedIndex") == -1
        page.keyboard.press("Enter")
        page.wait_for_timeout(500)
        assert page.url.rsplit("/", 1)[-1] == first and store.decisions() == []
        page.keyboard.press("Escape")

        # s: skipped, the next sample comes, nothing is decided.
        page.keyboard.press("s")
        page.wait_for_url(lambda u: first not in u)
        second = page.url.rsplit("/", 1)[-1]
        assert store.decisions() == []

        # a then u: the accept is withdrawn by a new decision and the sample comes back.
        page.keyboard.press("a")
        page.wait_for_url(lambda u: second not in u)
        page.wait_for_selector("#undo-form")
        page.keyboard.press("u")
        page.wait_for_url(f"**/samples/{second}?undone=1")
        assert "withdrawn" in page.inner_text("main")
    ana = {n: i for i, n in store.annotator_names().items()}["ana"]
    assert [(d.sample_id, d.action) for d in store.decisions()] == [(second, "accept"), (second, "undo")]
    assert first in store.skipped(ana)
    store.close()
