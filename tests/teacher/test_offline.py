"""The in-process `vllm` backend: rounds of `LLM.chat`, the shared cache, and a real engine where a GPU is."""

from __future__ import annotations

import importlib.util
import json
from types import SimpleNamespace

import pytest

from cotaforge.teacher import offline
from cotaforge.teacher.base import CotStages, TeacherFailure
from cotaforge.teacher.cache import ResponseCache
from cotaforge.teacher.llm import LLMTeacher
from tests.teacher.conftest import cot_request, teacher_config
from tests.teacher.fake_openai import answer_for


class FakeLLM:
    """Answers like vllm.LLM.chat: the first answer of each conversation is cut off, the next one is good."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.seen: set[str] = set()

    def chat(self, conversations, sampling_params, use_tqdm):
        self.calls.append(len(conversations))
        outputs = []
        for messages in conversations:
            key = json.dumps(messages)
            text, reason = json.dumps(answer_for({"messages": messages, "response_format": {
                "type": "json_object", "schema": {"properties": dict.fromkeys(CotStages.model_fields)}}})), "stop"
            if key not in self.seen:
                self.seen.add(key)
                text, reason = text[:20], "length"
            outputs.append(SimpleNamespace(prompt_token_ids=[1] * 50, outputs=[
                SimpleNamespace(text=text, finish_reason=reason, token_ids=[1] * 30)]))
        return outputs


def _engine(tmp_path, monkeypatch) -> offline.VLLMEngine:
    monkeypatch.setattr(offline, "sampling_params", lambda body: body)
    engine = object.__new__(offline.VLLMEngine)
    engine.llm = FakeLLM()
    engine.cache = ResponseCache(tmp_path / "responses.sqlite")
    engine.system_role = True
    import threading

    engine._generate_lock = threading.Lock()
    return engine


def test_offline_backend_answers_in_rounds_and_caches(tmp_path, monkeypatch):
    cfg = teacher_config(tmp_path, ["http://unused:1/v1"])
    engine = _engine(tmp_path, monkeypatch)
    teacher = LLMTeacher(cfg, "expand", engine, "vllm")
    results = teacher.write_cots([cot_request(i) for i in range(3)])
    assert all(isinstance(r, CotStages) for r in results)
    assert engine.llm.calls == [3, 3]  # the truncated round, then the retry round
    again = LLMTeacher(cfg, "expand", engine, "vllm")
    again.write_cots([cot_request(i) for i in range(3)])
    assert engine.llm.calls == [3, 3] and again.usage.cache_hits == 6


def test_offline_backend_rejects_after_its_attempts(tmp_path, monkeypatch):
    cfg = teacher_config(tmp_path, ["http://unused:1/v1"], "teacher.output_attempts=1")
    teacher = LLMTeacher(cfg, "expand", _engine(tmp_path, monkeypatch), "vllm")
    result = teacher.write_cots([cot_request(0)])[0]
    assert isinstance(result, TeacherFailure) and result.reason == "teacher_truncated" and result.raw


@pytest.mark.gpu
def test_sampling_params_carry_the_json_schema():
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (the vllm extra, on a GPU machine)")
    body = {"temperature": 0.5, "max_tokens": 64, "seed": 3,
            "response_format": {"type": "json_schema", "json_schema": {"name": "cot", "schema": {"type": "object"}}}}
    params = offline.sampling_params(body)
    assert params.structured_outputs.json == {"type": "object"} and params.seed == 3
