"""Eight annotators at once against a real server: 200 decisions each, none lost, none counted twice."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cotaforge.review.db import ReviewStore, default_db_url
from cotaforge.review.samples import RunSamples
from cotaforge.store import RunDir

from .factories import copy_run, form_value, replicate_samples
from .server import browser_session, start_server, stop_server

ANNOTATORS = 8
DECISIONS_EACH = 200
REPLAY_EVERY = 25  # every 25th form is sent twice, as a double click would


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_eight_annotators_two_hundred_decisions_each(base_run: RunDir, tmp_path: Path, backend: str,
                                                     request: pytest.FixtureRequest) -> None:
    run = copy_run(base_run, tmp_path / "output")
    copies = math.ceil(ANNOTATORS * DECISIONS_EACH * 1.1 / base_run.part_rows("balance"))
    replicate_samples(run, copies)
    db_url = None
    if backend == "postgres":
        from .postgres import fresh_database

        db_url = fresh_database(request.getfixturevalue("postgres_url"))
    store = ReviewStore(db_url or default_db_url(run))
    # annotator0 is an admin, so the progress page shows everyone's counts.
    tokens = {f"annotator{i}": store.add_annotator(f"annotator{i}", admin=i == 0) for i in range(ANNOTATORS)}
    process, url = start_server(run, tmp_path / "server.log", db_url)
    latencies: list[float] = []

    def annotate(name: str) -> list[str]:
        client, csrf = browser_session(url, tokens[name])
        location = client.post("/next", data={"csrf_token": csrf}, follow_redirects=False).headers["location"]
        decided = []
        for i in range(DECISIONS_EACH):
            sample_id = location.split("/")[-1].split("?")[0]
            page = client.get(location)
            page.raise_for_status()
            form = {"csrf_token": csrf, "nonce": form_value(page.text, "nonce"),
                    "revision": form_value(page.text, "revision"), "action": "accept" if i % 4 else "reject",
                    "reason": "other" if i % 4 == 0 else ""}
            started = time.perf_counter()
            response = client.post(f"/samples/{sample_id}/decision", data=form, follow_redirects=False)
            latencies.append(time.perf_counter() - started)
            if i % REPLAY_EVERY == 0:
                replay = client.post(f"/samples/{sample_id}/decision", data=form, follow_redirects=False)
                assert replay.status_code == 303
            assert response.status_code == 303, response.text[:200]
            decided.append(sample_id)
            location = response.headers["location"]
            assert location.startswith("/samples/") or i == DECISIONS_EACH - 1
        client.close()
        return decided

    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(ANNOTATORS) as pool:
            results = dict(zip(tokens, pool.map(annotate, tokens)))
        wall_s = time.perf_counter() - started
        progress_client, _ = browser_session(url, tokens["annotator0"])
        progress = progress_client.get("/progress").text
    finally:
        stop_server(process)

    decisions = store.decisions()
    assert len(decisions) == ANNOTATORS * DECISIONS_EACH
    assert Counter(d.annotator for d in decisions) == {name: DECISIONS_EACH for name in tokens}
    assert len({(d.sample_id, d.annotator) for d in decisions}) == ANNOTATORS * DECISIONS_EACH
    assert {(d.sample_id, d.annotator) for d in decisions} == {(s, n) for n, ids in results.items() for s in ids}
    samples = RunSamples(run)
    per_sample = Counter(d.sample_id for d in decisions)
    assert all(n <= samples.target(samples.by_id[sid]) for sid, n in per_sample.items())
    for name in tokens:
        assert f"<td>{name}</td><td>{DECISIONS_EACH}</td>" in progress
    log = (tmp_path / "server.log").read_text()
    assert all(token not in log for token in tokens.values()) and "POST /samples/" in log
    latencies.sort()
    figures = {"backend": backend, "annotators": ANNOTATORS, "decisions": len(decisions), "samples": len(samples.entries),
               "wall_s": round(wall_s, 1), "decisions_per_s": round(len(decisions) / wall_s, 1),
               "post_p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
               "post_p95_ms": round(1000 * latencies[int(len(latencies) * 0.95)], 1)}
    print("review concurrency:", json.dumps(figures))
    store.close()
