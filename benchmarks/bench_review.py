"""Review benchmark: what one sample page and one decision cost, and what the normal-form check adds to validate.

    .venv/bin/python benchmarks/bench_review.py                  # 150 decisions; the text check
    PYTHONPATH=OLD/src .venv/bin/python benchmarks/bench_review.py --pages-only   # an older checkout's app

A small real run (spoken digits and drum hits through the template teacher, as the review tests build it) is
copied 12 times under new sample ids (1,776 samples). One annotator signs in to the app through FastAPI's
TestClient (in process, one thread: no network, no contention) and decides N samples in a row: each time the
sample page is loaded and an accept is posted, which also serves the next sample. Then `check_text` (the
validate stage's normal-form check) and the whole of `validate_samples` run over the run's expand samples;
best of 20 rounds each. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' run factories


def bench_pages(root: Path, decisions: int) -> dict:
    from fastapi.testclient import TestClient

    from cotaforge.review.app import create_app
    from tests.review.factories import build_run, form_value, replicate_samples

    run, cfg = build_run(root)
    replicate_samples(run, 12)
    app = create_app(run.root)
    client = TestClient(app)
    token = app.state.store.add_annotator("ana")
    page = client.get("/login")
    client.post("/login", data={"token": token, "csrf_token": form_value(page.text, "csrf_token")})
    csrf = form_value(client.get("/").text, "csrf_token")
    location = client.post("/next", data={"csrf_token": csrf}, follow_redirects=False).headers["location"]
    get_s = post_s = 0.0
    for _ in range(decisions):
        started = time.perf_counter()
        page = client.get(location).text
        get_s += time.perf_counter() - started
        sample_id = location.split("/")[-1]
        started = time.perf_counter()
        response = client.post(f"/samples/{sample_id}/decision", follow_redirects=False, data={
            "csrf_token": csrf, "nonce": form_value(page, "nonce"), "revision": "0", "action": "accept"})
        post_s += time.perf_counter() - started
        location = response.headers["location"]
    app.state.store.close()
    return {"samples": len(app.state.samples.entries), "decisions": decisions,
            "sample_page_ms": round(1000 * get_s / decisions, 1), "decision_post_ms": round(1000 * post_s / decisions, 1)}


def bench_text_check(root: Path, rounds: int = 20) -> dict:
    from cotaforge.stages.validate import check_text
    from cotaforge.store import RunDir

    run = RunDir(next((root / "output" / "runs").iterdir()))
    from cotaforge.review.samples import load_run_config

    from cotaforge.stages.ingest import load_run_stats, read_clips
    from cotaforge.stages.validate import validate_samples

    cfg = load_run_config(run)
    # The run's samples once (copies would be near-duplicate questions of one clip, a costlier path).
    samples = [row for b in range(run.batch_count()) for row in run.read_part("expand", b).to_pylist()]
    clips = {c["clip_id"]: c for b in range(run.batch_count())
             for c in read_clips(run, b, load_run_stats(run)).to_pylist()}

    def best_us(work) -> float:
        best = float("inf")
        for _ in range(rounds):
            started = time.perf_counter()
            work()
            best = min(best, time.perf_counter() - started)
        return round(1e6 * best / len(samples), 1)

    check_us = best_us(lambda: [check_text(sample, cfg) for sample in samples])
    validate_us = best_us(lambda: validate_samples(samples, clips, cfg))  # every check, this one included
    return {"checked_samples": len(samples), "check_text_us_per_sample": check_us,
            "validate_us_per_sample": validate_us, "check_text_share": round(check_us / validate_us, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=150, help="samples decided in a row")
    parser.add_argument("--pages-only", action="store_true", help="skip the text check (for a version without it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = bench_pages(Path(tmp), args.decisions)
        if not args.pages_only:
            figures.update(bench_text_check(Path(tmp)))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
