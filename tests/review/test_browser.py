"""A real browser (Playwright driving Debian's chromium, headless) reviews with the keyboard shortcuts.

It signs in, accepts, rejects and edits with the keys listed on the page, then finds the decisions in the
database and in the published dataset. The sample page's screenshot is saved in the test's folder and
copied to output/review-screenshot.png. Skips where chromium or playwright is missing (never runs
`playwright install`: install Debian's `chromium` instead).
"""

from __future__ import annotations

import json
import shutil
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


@pytest.mark.slow
@pytest.mark.integration
def test_review_in_a_browser_with_the_keyboard(base_run: RunDir, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    run = copy_run(base_run, tmp_path / "output")
    store = ReviewStore(default_db_url(run))
    token = store.add_annotator("ana")
    process, url = start_server(run, tmp_path / "server.log")
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(20_000)
            page.goto(f"{url}/login")
            page.fill("#token", token)
            page.click("button[type=submit]")
            page.wait_for_url(f"{url}/")

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
            browser.close()
    finally:
        stop_server(process)

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
