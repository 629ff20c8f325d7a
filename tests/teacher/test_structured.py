"""Structured output: request bodies per mode, and parsing answers back into pydantic models."""

from __future__ import annotations

import json

import pytest

from cotaforge.teacher.base import CotStages, QuestionDraft
from cotaforge.teacher.structured import (extract_json, model_schema, parse_reply, repair_messages, response_format,
                                          schema_instruction)


def test_json_schema_mode_is_vllms_response_format():
    schema = model_schema(CotStages)
    fmt = response_format("json_schema", "cot", schema)
    assert fmt == {"type": "json_schema", "json_schema": {"name": "cot", "schema": schema, "strict": True}}
    assert "guided_json" not in json.dumps(fmt)
    assert set(schema["required"]) == {"planning", "caption", "reasoning", "summary", "response"}
    assert "$defs" not in schema


def test_json_object_mode_carries_the_schema_for_llama_cpp():
    schema = model_schema(QuestionDraft)
    assert response_format("json_object", "question", schema) == {"type": "json_object", "schema": schema}


def test_plain_json_mode_sends_no_constraint_but_shows_the_schema():
    schema = model_schema(CotStages)
    assert response_format("json", "cot", schema) is None
    assert '"planning"' in schema_instruction(schema) and '"response"' in schema_instruction(schema)
    with pytest.raises(ValueError, match="unknown structured output mode"):
        response_format("grammar", "cot", schema)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ['{"question": "Q?", "wrong_options": []}',
                                  '```json\n{"question": "Q?", "wrong_options": []}\n```',
                                  'Here you go: {"question": "Q?", "wrong_options": []} Hope it helps.'])
def test_replies_parse_through_fences_and_prose(text):
    assert parse_reply(text, QuestionDraft) == QuestionDraft(question="Q?", wrong_options=[])


def test_bad_replies_raise_a_reason_the_model_can_act_on():
    with pytest.raises(ValueError, match="no JSON object"):
        extract_json("I cannot answer that.")
    with pytest.raises(ValueError, match="not valid JSON"):
        extract_json('{"question": "Q?",, }')
    with pytest.raises(ValueError, match="does not fit the schema: caption"):
        parse_reply('{"planning": "p", "reasoning": "r", "summary": "s", "response": "x"}', CotStages)
    with pytest.raises(ValueError, match="notes: Extra inputs"):
        parse_reply('{"question": "Q?", "wrong_options": [], "notes": 1}', QuestionDraft)


def test_repair_conversation_shows_the_bad_reply_and_the_problem():
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    repaired = repair_messages(messages, "{oops", "the reply is not valid JSON")
    assert repaired[:2] == messages and repaired[2] == {"role": "assistant", "content": "{oops"}
    assert "not valid JSON" in repaired[3]["content"] and repaired[3]["role"] == "user"
