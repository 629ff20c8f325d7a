"""What the openai teacher sends: structured output per mode, audio parts, questions that fit their answers,
and the configuration that chooses all of it."""

from __future__ import annotations

import base64
import io
import json
import wave

import numpy as np
import pytest

from cotaforge.config import load_config
from cotaforge.errors import ConfigError
from cotaforge.teacher.base import CaptionRequest, CaptionText, CotStages, QuestionDraft, QuestionRequest
from cotaforge.teacher.build import build_teacher
from cotaforge.teacher.llm import question_problem, split_wav
from tests.teacher.conftest import FACTS, cot_request, teacher_config


def _wav(seconds: float, rate_hz: int = 16_000) -> bytes:
    samples = (np.sin(np.arange(int(seconds * rate_hz)) * 0.05) * 8000).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate_hz)
        writer.writeframes(samples.tobytes())
    return out.getvalue()


@pytest.mark.parametrize("mode,expected", [("json_schema", "json_schema"), ("json_object", "json_object"),
                                           ("json", None)])
def test_request_bodies_per_structured_output_mode(tmp_path, fake_server, mode, expected):
    server = fake_server()
    teacher = build_teacher(teacher_config(tmp_path, [server.url], f"teacher.structured_output={mode}",
                                           "teacher.temperature=0.3", "teacher.max_tokens=300"), "expand")
    teacher.write_cots([cot_request(0)])
    body = server.log[0].body
    assert body["model"] == "fake-model" and body["temperature"] == 0.3 and body["max_tokens"] == 300
    assert isinstance(body["seed"], int)
    assert not any(key.startswith("guided_") for key in body)  # ignored by current vLLM: never sent
    fmt = body.get("response_format")
    if expected is None:
        assert fmt is None
    else:
        assert fmt["type"] == expected
        schema = fmt["json_schema"]["schema"] if expected == "json_schema" else fmt["schema"]
        assert set(schema["required"]) == {"planning", "caption", "reasoning", "summary", "response"}
    assert "Correct answer: B" in body["messages"][1]["content"]


def test_audio_captions_send_the_clip_in_30_second_windows(tmp_path, fake_server):
    server = fake_server()
    cfg = teacher_config(tmp_path, [server.url], "caption.mode=audio_llm")
    teacher = build_teacher(cfg, "caption")
    results = teacher.write_captions([CaptionRequest("clip-long", ["rain"], {}, FACTS, _wav(70.0)),
                                      CaptionRequest("clip-short", ["dog"], {}, FACTS, _wav(4.0))])
    assert all(isinstance(r, CaptionText) for r in results)
    assert results[0].caption.startswith("From 0 s to 30 s:") and "From 60 s to 70 s:" in results[0].caption
    assert not results[1].caption.startswith("From")
    windows = []
    for seen in server.log:
        user = seen.body["messages"][1]["content"]
        audio = [part for part in user if part["type"] == "input_audio"]
        assert len(audio) == 1 and audio[0]["input_audio"]["format"] == "wav"
        with wave.open(io.BytesIO(base64.b64decode(audio[0]["input_audio"]["data"]))) as reader:
            assert reader.getframerate() == 16_000 and reader.getnchannels() == 1
            windows.append(round(reader.getnframes() / 16_000, 1))
        assert seen.body["response_format"]["type"] == "json_schema"
    assert sorted(windows) == [4.0, 10.0, 30.0, 30.0]


def test_a_short_tail_joins_the_window_before_it():
    assert [(s, e) for s, e, _ in split_wav(_wav(60.5), 30.0)] == [(0.0, 30.0), (30.0, 60.5)]
    assert [(s, e) for s, e, _ in split_wav(_wav(12.0), 30.0)] == [(0.0, 12.0)]


def _question(kind: str, **extra) -> QuestionRequest:
    return QuestionRequest(sample_id="s", question_type=kind, answer_text="rain", caption="c", facts=FACTS, **extra)


@pytest.mark.parametrize("request_,draft,problem", [
    (_question("multiple_choice", n_wrong_options=2), QuestionDraft(question="What is it?", wrong_options=["dog", "car"]), None),
    (_question("multiple_choice", n_wrong_options=2), QuestionDraft(question="What is it?", wrong_options=["dog"]), "exactly 2"),
    (_question("multiple_choice", n_wrong_options=2), QuestionDraft(question="What is it?", wrong_options=["dog", "Dog"]), "differ"),
    (_question("multiple_choice", n_wrong_options=2), QuestionDraft(question="What is it?", wrong_options=["dog", "Rain"]), "repeats"),
    (_question("multiple_choice", n_wrong_options=2, avoid=("thunder",)),
     QuestionDraft(question="What is it?", wrong_options=["dog", "thunder"]), "repeats"),
    (_question("open_ended"), QuestionDraft(question="Is that rain I hear?"), "gives away"),
    (_question("yes_no", asked_value="dog"), QuestionDraft(question='Is this a "dog"?'), None),
    (_question("yes_no", asked_value="dog"), QuestionDraft(question="Is this a cat?"), 'about "dog"'),
    (_question("yes_no", asked_value="dog"), QuestionDraft(question="Is this a dog?", wrong_options=["x"]), "no options"),
    (_question("comparison", grounding={"more": "longer", "less": "shorter", "reference": "0.5 seconds"}),
     QuestionDraft(question="Is it longer or shorter than 0.5 seconds?"), None),
    (_question("comparison", grounding={"more": "longer", "less": "shorter", "reference": "0.5 seconds"}),
     QuestionDraft(question="Is it longer than 0.5 seconds?"), '"longer" and "shorter"'),
    (_question("comparison", grounding={"more": "longer", "less": "shorter", "reference": "0.5 seconds"}),
     QuestionDraft(question="Is it longer or shorter than usual?"), "reference"),
])
def test_drafted_questions_must_fit_their_fixed_answer(request_, draft, problem):
    found = question_problem(request_, draft)
    assert (found is None) if problem is None else (problem in found)


def test_question_requests_constrain_the_number_of_wrong_options(tmp_path, fake_server):
    server = fake_server()
    teacher = build_teacher(teacher_config(tmp_path, [server.url], "expand.prompt_styles=[llm]"), "expand")
    drafts = teacher.write_questions([_question("multiple_choice", n_wrong_options=3)])
    assert len(drafts[0].wrong_options) == 3
    schema = server.log[0].body["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["wrong_options"]["minItems"] == 3 == schema["properties"]["wrong_options"]["maxItems"]


def test_fingerprint_follows_what_changes_answers_not_where_they_come_from(tmp_path):
    base = build_teacher(teacher_config(tmp_path, ["http://a:1/v1"]), "expand").fingerprint()
    assert build_teacher(teacher_config(tmp_path, ["http://b:1/v1", "http://c:1/v1"],
                                        "teacher.concurrency_per_endpoint=8", "teacher.timeout_s=9"),
                         "expand").fingerprint() == base
    for change in ("teacher.temperature=0.1", "teacher.max_tokens=99", "teacher.structured_output=json",
                   "teacher.cot_prompt=cot_template.v1"):
        try:
            other = build_teacher(teacher_config(tmp_path, ["http://a:1/v1"], change), "expand").fingerprint()
        except ConfigError:
            continue
        assert other != base, change
    other_model = load_config(None, [], teacher__backend="openai", teacher__base_urls=["http://a:1/v1"],
                              teacher__model="other")
    assert build_teacher(other_model, "expand").fingerprint() != base


@pytest.mark.parametrize("flags,overrides,message", [
    ({"teacher__backend": "openai"}, [], "needs teacher.model"),
    ({"teacher__backend": "openai", "teacher__model": "m"}, [], "at least one teacher.base_urls"),
    ({"teacher__base_urls": ["http://a:1/v1"]}, [], "add --teacher openai"),
    ({"teacher__backend": "openai", "teacher__model": "m", "teacher__base_urls": ["gpu1:8000"]}, [], "not an http"),
    ({}, ["caption.mode=audio_llm"], "need an LLM teacher"),
    ({}, ["expand.prompt_styles=[concise, llm]"], "need an LLM teacher"),
    ({}, ["validate.judge=true"], "need an LLM teacher"),
    ({}, ["teacher.concurrency_per_endpoint=0"], "greater than or equal to 1"),
    ({}, ["teacher.api_key=sk-123"], "Extra inputs"),
])
def test_teacher_config_fails_fast_with_what_to_do(flags, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides, **flags)


def test_the_command_line_sets_the_teacher(tmp_path):
    from cotaforge.cli import _build_config

    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\na.wav,x\n")
    cfg = _build_config(None, [manifest], tmp_path, None, None, None, teacher="openai",
                        base_url=["http://gpu1:8000/v1", "http://gpu2:8000/v1/"], model="Qwen/Qwen2.5-7B-Instruct")
    assert cfg.teacher.backend == "openai" and cfg.teacher.model == "Qwen/Qwen2.5-7B-Instruct"
    assert cfg.teacher.base_urls == ["http://gpu1:8000/v1", "http://gpu2:8000/v1"]
    assert cfg.teacher_cache_dir == tmp_path / "cache" / "teacher"
    assert json.dumps(cfg.to_dict()).count("OPENAI_API_KEY") == 1  # the variable's name, never a key


@pytest.mark.parametrize("mode", ["json_schema", "json_object", "json"])
def test_requests_match_what_the_openai_sdk_sends(tmp_path, fake_server, monkeypatch, mode):
    """The client posts JSON itself (aiohttp; far less CPU per request than the SDK): what reaches the server
    must be what `AsyncOpenAI.chat.completions.create` sends for the same request, key included, and the
    answers it reads must be ones the SDK parses."""
    import asyncio

    from openai import AsyncOpenAI

    monkeypatch.setenv("OPENAI_API_KEY", "sk-compat-check")
    server = fake_server()
    teacher = build_teacher(teacher_config(tmp_path, [server.url], f"teacher.structured_output={mode}"), "expand")
    teacher.write_cots([cot_request(0)])
    ours = server.log[0]

    async def through_the_sdk():
        async with AsyncOpenAI(base_url=server.url, api_key="sk-compat-check", max_retries=0) as client:
            return await client.chat.completions.create(**ours.body)

    completion = asyncio.run(through_the_sdk())
    theirs = server.log[1]
    assert theirs.body == ours.body and theirs.key == ours.key
    assert ours.authorization == theirs.authorization == "Bearer sk-compat-check"
    assert completion.choices[0].finish_reason == "stop"
    assert json.loads(completion.choices[0].message.content)["response"]


def test_no_authorization_header_without_a_key(tmp_path, fake_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server = fake_server()
    build_teacher(teacher_config(tmp_path, [server.url]), "expand").write_cots([cot_request(0)])
    assert server.log[0].authorization is None


def test_requests_go_through_the_proxy_the_environment_names(tmp_path, fake_server, monkeypatch):
    """The fake server stands in for an HTTP proxy: it answers the absolute URL a client sends to a proxy."""
    server = fake_server()
    for name in ("http_proxy", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", server.url.removesuffix("/v1"))
    teacher = build_teacher(teacher_config(tmp_path, ["http://teacher.invalid:8000/v1"]), "expand")
    assert isinstance(teacher.write_cots([cot_request(0)])[0], CotStages)
    assert len(server.log) == 1
