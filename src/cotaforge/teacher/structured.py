"""Structured output: how a request asks for JSON that fits a pydantic model, and how the answer is read.

Three modes, chosen by `teacher.structured_output`:
- `json_schema`: `response_format: {type: json_schema, json_schema: {name, schema, strict}}`, what vLLM's
  OpenAI-compatible server enforces with its structured-output backend (xgrammar or guidance). The old
  `guided_json` request fields are ignored by current vLLM, so they are never sent.
- `json_object`: `response_format: {type: json_object, schema}`, what the llama.cpp server enforces with a grammar.
- `json`: no constraint; the prompt shows the schema and a parse failure gets one repair request.
Whatever the mode, every answer is re-validated with its pydantic model.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

StructuredMode = Literal["json_schema", "json_object", "json"]
STRUCTURED_MODES: tuple[str, ...] = ("json_schema", "json_object", "json")
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema, inlined (no `$defs`), as structured-output backends like it best."""
    schema = model.model_json_schema()
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    return schema


def response_format(mode: StructuredMode, name: str, schema: dict[str, Any]) -> dict[str, Any] | None:
    """The `response_format` field of a chat request in this mode; None for plain JSON."""
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    if mode == "json_object":
        return {"type": "json_object", "schema": schema}
    if mode == "json":
        return None
    raise ValueError(f"unknown structured output mode {mode!r}; use one of {', '.join(STRUCTURED_MODES)}")


def schema_instruction(schema: dict[str, Any]) -> str:
    """A line for the prompt that shows the fields to fill in (every mode, so unconstrained models know too)."""
    fields = ", ".join(f'"{name}"' for name in schema.get("properties", {}))
    return (f"Reply with one JSON object with exactly these keys: {fields}. "
            f"Its JSON Schema: {json.dumps(schema, separators=(',', ':'))}")


def extract_json(text: str) -> Any:
    """The JSON value in a reply, tolerating code fences and prose around one object. Raises ValueError."""
    stripped = _FENCE.sub("", text.strip())
    try:
        return json.loads(stripped)
    except json.JSONDecodeError:
        start, end = stripped.find("{"), stripped.rfind("}")
        if start < 0 or end <= start:
            raise ValueError("the reply holds no JSON object") from None
        try:
            return json.loads(stripped[start:end + 1])
        except json.JSONDecodeError as exc:
            raise ValueError(f"the reply is not valid JSON: {exc}") from None


def parse_reply(text: str, model: type[BaseModel]) -> BaseModel:
    """Parse and validate a reply; raises ValueError with a short, model-readable reason."""
    value = extract_json(text)
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'reply'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"the JSON does not fit the schema: {problems}") from None


def repair_messages(messages: list[dict[str, Any]], raw: str, error: str) -> list[dict[str, Any]]:
    """The conversation extended with the bad reply and a request to correct it (plain JSON mode)."""
    return [*messages, {"role": "assistant", "content": raw},
            {"role": "user", "content": f"That reply could not be used: {error}. "
                                        "Send the corrected JSON object only, with no other text."}]
