"""Fixtures of the teacher tests: a fake OpenAI server, configs pointing at it, and requests to send."""

from __future__ import annotations

from pathlib import Path

import pytest

from cotaforge.config import RunConfig, load_config
from cotaforge.teacher.base import CotRequest
from tests.teacher.fake_openai import FakeOpenAIServer

FACTS = {"duration_s": 1.2, "loudness_dbfs": -21.0, "peak_dbfs": -3.0, "clipping_ratio": 0.0, "silence_ratio": 0.2,
         "spectral_centroid_hz": 1400.0, "onset_count": 2, "tempo_bpm": None, "f0_median_hz": 180.0,
         "voiced_ratio": 0.6}


def teacher_config(out_dir: Path, urls: list[str], *overrides: str) -> RunConfig:
    """An openai-teacher config with fast retries (the fault tests wait on them)."""
    return load_config(None, [f"run.out_dir={out_dir}", "teacher.backoff_s=0.01", "teacher.backoff_max_s=0.05",
                              "teacher.timeout_s=1", "teacher.connect_timeout_s=1", *overrides],
                       teacher__backend="openai", teacher__base_urls=urls, teacher__model="fake-model")


def cot_request(i: int, question_type: str = "multiple_choice") -> CotRequest:
    if question_type == "multiple_choice":
        return CotRequest(sample_id=f"sample-{i}", question_type="multiple_choice", target="class",
                          question="Which option matches the sound?", options=["dog", "rain", "siren"], answer="B",
                          answer_text='"rain"', caption=f"Steady rain on a roof, take {i}.", facts=FACTS)
    return CotRequest(sample_id=f"sample-{i}", question_type="yes_no", target="class", question='Is this "rain"?',
                      options=[], answer="yes", answer_text='"rain"', caption=f"Steady rain on a roof, take {i}.", facts=FACTS,
                      asked_value="rain")


@pytest.fixture
def fake_server():
    """Start fake servers: `fake_server(latency_s=..., fault=...)`; all stop at the end of the test."""
    servers: list[FakeOpenAIServer] = []

    def start(**kwargs) -> FakeOpenAIServer:
        server = FakeOpenAIServer(**kwargs).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)
