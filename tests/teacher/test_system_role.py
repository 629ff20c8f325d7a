"""Chat formats without a system role (Gemma): the instructions and the JSON schema travel in the first user turn."""

from __future__ import annotations

import importlib.util

import pytest

from cotaforge.config import load_config
from cotaforge.teacher.base import CotStages
from cotaforge.teacher.build import build_teacher
from cotaforge.teacher.cache import request_key
from cotaforge.teacher.client import fold_system_message, prepared_body, sends_system_role
from tests.teacher.conftest import cot_request

SCHEMA_MARK = "Its JSON Schema:"  # the line structured.schema_instruction puts in every system prompt


def _config(tmp_path, url: str, model: str, *overrides: str):
    return load_config(None, [f"run.out_dir={tmp_path}", "teacher.backoff_s=0.01", "teacher.timeout_s=5", *overrides],
                       teacher__backend="openai", teacher__base_urls=[url], teacher__model=model)


@pytest.mark.parametrize("model,setting,kept", [
    ("gemma-3-270m", "auto", False), ("google/gemma-2-9b-it", "auto", False), ("Qwen/Qwen2.5-7B-Instruct", "auto", True),
    ("gemma-3-270m", True, True), ("Qwen/Qwen2.5-7B-Instruct", False, False),
])
def test_system_role_setting_per_model(model, setting, kept):
    assert sends_system_role(model, setting) is kept


def test_a_gemma_endpoint_gets_no_system_message_and_the_schema_in_the_first_user_turn(tmp_path, fake_server):
    server = fake_server()
    teacher = build_teacher(_config(tmp_path, server.url, "gemma-3-270m", "teacher.structured_output=json_object"),
                            "expand")
    results = teacher.write_cots([cot_request(0), cot_request(1, "yes_no")])
    assert all(isinstance(r, CotStages) for r in results)
    for seen in server.log:
        messages = seen.body["messages"]
        assert [m["role"] for m in messages] == ["user"]
        first = messages[0]["content"]
        assert SCHEMA_MARK in first and '"planning"' in first  # the schema and the rules...
        assert first.index(SCHEMA_MARK) < first.index("Correct answer:")  # ...before the task itself


def test_other_models_keep_their_system_message(tmp_path, fake_server):
    server = fake_server()
    build_teacher(_config(tmp_path, server.url, "Qwen/Qwen2.5-7B-Instruct"), "expand").write_cots([cot_request(0)])
    messages = server.log[0].body["messages"]
    assert [m["role"] for m in messages] == ["system", "user"] and SCHEMA_MARK in messages[0]["content"]
    assert SCHEMA_MARK not in messages[1]["content"]


def test_folding_changes_the_fingerprint_and_the_cache_key(tmp_path):
    folded = build_teacher(_config(tmp_path, "http://a:1/v1", "gemma-3-270m"), "expand")
    kept = build_teacher(_config(tmp_path, "http://a:1/v1", "gemma-3-270m", "teacher.system_role=true"), "expand")
    assert folded.fingerprint() != kept.fingerprint()  # parts made without the instructions are redone
    body = {"model": "m", "messages": [{"role": "system", "content": "rules"}, {"role": "user", "content": "task"}]}
    assert request_key(prepared_body(body, False), "v") != request_key(prepared_body(body, True), "v")
    # Models that keep the system role keep their fingerprint: nothing is redone for them.
    qwen = build_teacher(_config(tmp_path, "http://a:1/v1", "Qwen/Qwen2.5-7B-Instruct"), "expand")
    assert "system_role" not in qwen.parameters()


def test_folding_keeps_audio_parts_and_later_turns():
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    messages = [{"role": "system", "content": "rules"},
                {"role": "user", "content": [audio, {"type": "text", "text": "caption this"}]},
                {"role": "assistant", "content": "{}"}, {"role": "user", "content": "fix it"}]
    folded = fold_system_message(messages)
    assert [m["role"] for m in folded] == ["user", "assistant", "user"]
    assert folded[0]["content"] == [audio, {"type": "text", "text": "rules\n\ncaption this"}]
    assert folded[2] == {"role": "user", "content": "fix it"}
    assert messages[1]["content"][1]["text"] == "caption this"  # the original conversation is untouched


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
def test_the_schema_reaches_the_prompt_llama_cpp_renders_for_gemma(tmp_path, fake_server):
    """llama-cpp-python's `gemma` chat format (what `teacher serve --local` runs) drops system messages: rendered
    by that very formatter, the folded request carries the schema, the unfolded one does not."""
    from llama_cpp.llama_chat_format import format_gemma

    server = fake_server()
    for setting, schema_reaches_the_model in (("true", False), ("auto", True)):
        build_teacher(_config(tmp_path / setting, server.url, "gemma-3-270m", f"teacher.system_role={setting}"),
                      "expand").write_cots([cot_request(0)])
        prompt = format_gemma(messages=server.log[-1].body["messages"]).prompt
        assert "Correct answer: B" in prompt
        assert (SCHEMA_MARK in prompt) is schema_reaches_the_model, setting
