"""The whole pipeline with the openai teacher against a faulty local server, killed with SIGKILL mid-run and
run again with the same command.

One scenario (two `cotaforge run` processes), several checks: no answered request is sent twice, no sample is
lost or duplicated, every injected fault is retried or rejected and the run completes, and the API key
appears nowhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from tests.conftest import EXAMPLES, _subset_manifest
from tests.teacher.fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.integration

SECRET = "sk-test-do-not-leak-5f2b9c"
KILL_AFTER_ANSWERS = 40
RACE_MARGIN_S = 1.0  # an answer written this close to the kill may not have reached the client's cache


def _fault(request) -> str | None:
    """Deterministic faults: a few prompts always answer badly (-> rejects); many fail once (-> retries)."""
    prompt = hashlib.sha256(json.dumps(request.body["messages"], sort_keys=True).encode()).digest()
    if prompt[0] % 23 == 0:
        return "invalid"  # every attempt: a reject that keeps the raw output
    if request.times_seen:
        return None
    pick = int(request.key[:8], 16) % 40
    return {0: "500", 1: "500", 2: "429", 3: "timeout", 4: "drop", 5: "malformed", 6: "invalid",
            7: "length"}.get(pick)


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    manifest = _subset_manifest(EXAMPLES / "digits" / "manifest.csv", root / "digits",
                                lambda r: r["label"] in {"one", "two", "three"} and r["path"].endswith(("_0.wav", "_1.wav"))
                                and r["speaker"] in {"george", "jackson"})
    with FakeOpenAIServer(latency_s=0.1, fault=_fault, hang_s=3.5, retry_after_s=0.3) as server:
        config = root / "run.yaml"
        config.write_text(
            f"run: {{name: resume, out_dir: {root / 'out'}, batch_size: 4, workers: 2}}\n"
            f"inputs: {{manifests: [{manifest}], group_by: speaker}}\n"
            "caption: {mode: text_llm}\n"
            # Source clips only: the sample check below re-plans them (scenes have tests of their own).
            "compose: {enabled: false}\n"
            "expand: {prompt_styles: [concise, llm]}\n"
            "validate: {judge: true}\n"
            "teacher: {concurrency_per_endpoint: 4, timeout_s: 3, backoff_s: 0.05, backoff_max_s: 0.2,\n"
            "          usd_per_million_prompt_tokens: 0.5, usd_per_million_completion_tokens: 1.5}\n",
            encoding="utf-8")
        command = [sys.executable, "-m", "cotaforge.cli", "run", str(config), "--teacher", "openai",
                   "--base-url", server.url, "--model", "fake-model"]
        env = {**os.environ, "OPENAI_API_KEY": SECRET, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        deadline = time.monotonic() + 240
        while sum(s.answered_at is not None for s in server.log) < KILL_AFTER_ANSWERS:
            assert first.poll() is None, first.stdout.read().decode()
            assert time.monotonic() < deadline, "the run sent too few requests"
            time.sleep(0.05)
        killed_at = time.time()
        os.killpg(first.pid, signal.SIGKILL)  # the run and its children (Prefect's server) die at once
        first.wait()
        first_output = first.stdout.read().decode()
        sent_before = len(server.log)
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
        yield {"root": root, "server": server, "killed_at": killed_at, "sent_before": sent_before,
               "second": second, "output": first_output + second.stdout + second.stderr,
               "run": root / "out" / "runs" / "resume", "dataset": root / "out" / "datasets" / "resume" / "v1"}


def test_the_second_run_completes(killed_and_resumed):
    second = killed_and_resumed["second"]
    assert second.returncode == 0, second.stdout + second.stderr
    assert (killed_and_resumed["dataset"] / "manifest.json").is_file()


def test_no_answered_request_is_sent_twice(killed_and_resumed):
    server, killed_at = killed_and_resumed["server"], killed_and_resumed["killed_at"]
    first_run, second_run = server.log[:killed_and_resumed["sent_before"]], server.log[killed_and_resumed["sent_before"]:]
    answered: dict[str, int] = {}
    for seen in [s for s in first_run if s.answered_at and s.answered_at < killed_at - RACE_MARGIN_S] + \
            [s for s in second_run if s.answered_at]:
        answered[seen.key] = answered.get(seen.key, 0) + 1
    twice = [(s.fault, round(s.received_at - killed_at, 2), s.answered_at and round(s.answered_at - killed_at, 2))
             for s in server.log if answered.get(s.key, 0) > 1]
    assert answered and max(answered.values()) == 1, twice
    before = {s.key for s in server.log[:killed_and_resumed["sent_before"]]
              if s.answered_at is not None and s.answered_at < killed_at - RACE_MARGIN_S}
    after = [s.key for s in server.log[killed_and_resumed["sent_before"]:]]
    assert before and not before & set(after)


def test_no_sample_is_lost_or_duplicated(killed_and_resumed):
    from cotaforge.config import load_config
    from cotaforge.prompts import load_bank
    from cotaforge.stages.caption import grounding_fields
    from cotaforge.stages.expand import QUESTION_PLACEHOLDERS, comparisons, plan_clip
    from cotaforge.stages.ingest import load_run_stats, read_clips
    from cotaforge.store import RunDir

    run = RunDir(killed_and_resumed["run"])
    cfg = load_config(run.root / "config.yaml")
    stats = load_run_stats(run)
    fields = grounding_fields(stats, cfg)
    bank = load_bank(cfg.expand.question_bank, QUESTION_PLACEHOLDERS)
    planned = []
    for batch in range(run.batch_count()):
        captioned = set(run.read_part("caption", batch, ["clip_id"])["clip_id"].to_pylist())
        for clip in read_clips(run, batch, stats).to_pylist():
            if clip["clip_id"] in captioned:
                planned += [p.request.sample_id for p in plan_clip(clip, "", cfg, stats, fields.get(
                    clip["source_dataset"], []), comparisons(stats), bank)]
    made = [sid for b in range(run.batch_count()) for sid in run.read_part("expand", b, ["sample_id"])["sample_id"].to_pylist()]
    rejected = run.rejects("expand")["sample_id"].to_pylist()
    assert len(made) == len(set(made)) and len(rejected) == len(set(rejected))
    assert sorted(made + rejected) == sorted(planned) and len(planned) > 50
    shards = [pq.read_table(killed_and_resumed["dataset"] / s["path"], columns=["sample_id"])
              for s in json.loads((killed_and_resumed["dataset"] / "manifest.json").read_text())["shards"]]
    published = [sid for t in shards for sid in t["sample_id"].to_pylist()]
    assert published and len(published) == len(set(published))


def test_faults_are_retried_or_rejected_with_their_raw_output(killed_and_resumed):
    from cotaforge.store import RunDir

    server = killed_and_resumed["server"]
    faults = {s.fault for s in server.log}
    assert {"500", "429", "timeout", "drop", "malformed", "invalid", "length"} <= faults
    rejects = RunDir(killed_and_resumed["run"]).rejects()
    teacher_rejects = [r for r in rejects.to_pylist() if r["reason"].startswith("teacher_")]
    assert teacher_rejects and all(r["reason"] == "teacher_invalid_output" and r["raw"] for r in teacher_rejects)
    report = json.loads((killed_and_resumed["run"] / "report.json").read_text())
    usage = {s["stage"]: s["teacher"] for s in report["stages"]}
    assert usage["expand"]["retries"] > 0 and usage["expand"]["cache_misses"] > 0
    assert usage["validate"]["cache_misses"] + usage["validate"]["cache_hits"] > 0  # the judge ran
    assert usage["expand"]["cost_usd"] > 0


def test_the_resumed_run_replays_from_the_cache(killed_and_resumed):
    report = json.loads((killed_and_resumed["run"] / "report.json").read_text())
    hits = sum(s["teacher"]["cache_hits"] for s in report["stages"])
    assert hits > 0
    assert "cache hits" in (killed_and_resumed["run"] / "report.md").read_text()


def test_the_api_key_appears_nowhere(killed_and_resumed):
    assert SECRET not in killed_and_resumed["output"]
    for folder in (killed_and_resumed["run"], killed_and_resumed["dataset"]):
        for path in folder.rglob("*"):
            if path.is_file():
                assert SECRET.encode() not in path.read_bytes(), path
