"""A small OpenAI-compatible chat server for tests and benchmarks: fixed latency, scripted faults, a request log.

Answers are deterministic functions of the request, and they pass cotaforge's validation: the server reads
the correct answer and the rules from cotaforge's prompts, the way a good teacher would. Faults (per
request, chosen by `fault(request) -> name | None`): `429` (with Retry-After), `500`, `400` (the request refused,
as vLLM refuses a prompt longer than its context), `500_validation` (a request refused with HTTP 500, as
llama-cpp-python's server refuses `response_format` type `json_schema`), `html` (a 200 whose body is a proxy's HTML page), `timeout`
(closes the connection after `hang_s`), `drop` (closes the connection), `malformed` (not JSON), `invalid` (JSON
that misses fields), `length` (cut off, finish_reason length).

Run alone (benchmarks): `python -m tests.teacher.fake_openai --port 8011 --latency-ms 200`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

FAULTS = ("429", "500", "400", "500_validation", "html", "timeout", "drop", "malformed", "invalid", "length")


@dataclass
class Seen:
    """One request the server received."""

    key: str  # sha256 of the canonical body
    body: dict[str, Any]
    fault: str | None
    received_at: float
    answered_at: float | None = None  # when a 200 answer was written
    authorization: str | None = None  # the Authorization header, to check how the key was sent


@dataclass
class FakeState:
    latency_s: float = 0.0
    hang_s: float = 5.0
    retry_after_s: float = 1.0
    fault: Callable[["Request"], str | None] | None = None
    log: list[Seen] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    record_bodies: bool = True


@dataclass(frozen=True)
class Request:
    body: dict[str, Any]
    key: str
    times_seen: int  # earlier requests with the same body
    seed: int
    task: str  # cot, question, caption, judge, or "" when unknown


def body_key(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if part.get("type") == "text")
    return content or ""


def _properties(body: dict[str, Any]) -> list[str]:
    fmt = body.get("response_format") or {}
    schema = fmt.get("json_schema", {}).get("schema") if fmt.get("type") == "json_schema" else fmt.get("schema")
    if schema:
        return list(schema.get("properties", {}))
    match = re.search(r"exactly these keys: ([^.]*)\.", _text(body["messages"][0]))
    return re.findall(r'"(\w+)"', match.group(1)) if match else []


def task_of(body: dict[str, Any]) -> str:
    props = set(_properties(body))
    if "reasoning" in props and "planning" in props:
        return "cot"
    if "wrong_options" in props:
        return "question"
    if "supports_answer" in props:
        return "judge"
    if props == {"caption"}:
        return "caption"
    return ""


def answer_for(body: dict[str, Any]) -> dict[str, Any]:
    """A good answer to one of cotaforge's requests."""
    task = task_of(body)
    user = _text(body["messages"][-1]) if body["messages"][-1]["role"] == "user" else ""
    if body["messages"][-1]["role"] == "user" and "could not be used" in user:  # a repair request
        user = _text(body["messages"][1])
    if task == "caption":
        return {"caption": "A short, clear sound with a sharp attack that fades quickly into silence."}
    if task == "judge":
        return {"supports_answer": True, "score": 4, "explanation": "Each step follows from what is heard."}
    if task == "question":
        if m := re.search(r"exactly (\d+) wrong options", user):
            n = int(m.group(1))
            return {"question": "Which of these best matches what you hear?",
                    "wrong_options": [f"distant rumble number {i + 1}" for i in range(n)]}
        if m := re.search(r'whether the clip is "([^"]+)"', user):
            return {"question": f'Would you say this recording is "{m.group(1)}"?', "wrong_options": []}
        if m := re.search(r'must contain the words "([^"]+)", "([^"]+)" and "([^"]+)"', user):
            return {"question": f"Is the clip {m.group(1)} or {m.group(2)} than {m.group(3)}?", "wrong_options": []}
        return {"question": "What do you hear in this recording?", "wrong_options": []}
    line = re.search(r"Correct answer: (.*)", user)
    answer = line.group(1).strip() if line else ""
    kind = re.search(r"Question \(([\w ]+)\)", user)
    kind = kind.group(1) if kind else ""
    if kind == "multiple choice":
        letter = answer[:1]
        summary, response = f"The sound matches option {letter}.", f"The answer is {letter}"
    elif kind == "yes no":
        word = answer.split(":")[0]
        summary, response = f"So the answer is {word}.", f"{word.capitalize()}, after listening closely."
    elif kind == "comparison":
        word = answer.split(" ")[0]
        summary, response = f"Overall the clip is {word}.", f"It is {word}."
    else:
        summary, response = f"The sound is {answer}.", f"It is {answer}."
    return {"planning": "I will listen to the whole clip and compare it with the question.",
            "caption": "A short, clear sound with a sharp attack that fades quickly.",
            "reasoning": "The attack, the decay and the overall level all point the same way.",
            "summary": summary, "response": response}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: FakeState

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.rstrip("/").endswith("/models"):
            self._send(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
        else:
            self._send(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:  # noqa: N802
        state = self.state
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if not self.path.rstrip("/").endswith("/v1/chat/completions"):
            self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        key = body_key(body)
        with state.lock:
            seen_before = state.counts.get(key, 0)
            state.counts[key] = seen_before + 1
        request = Request(body, key, seen_before, int(body.get("seed", 0)), task_of(body))
        fault = state.fault(request) if state.fault else None
        entry = Seen(key, body if state.record_bodies else {}, fault, time.time(),
                     authorization=self.headers.get("Authorization"))
        with state.lock:
            state.log.append(entry)
        if state.latency_s:
            time.sleep(state.latency_s)
        if fault == "429":
            self._send(429, {"error": {"message": "rate limited", "type": "rate_limit"}},
                       {"Retry-After": f"{state.retry_after_s:g}"})
            return
        if fault == "500":
            self._send(500, {"error": {"message": "engine crashed", "type": "server_error"}})
            return
        if fault == "500_validation":  # llama-cpp-python 0.3's body, word for word
            self._send(500, {"error": {"message": (
                "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
                "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema', 'ctx': {'expected': "
                "\"'text' or 'json_object'\"}}\n\n  File \"llama_cpp/server/app.py\", line 376, in "
                "create_chat_completion\n    POST /v1/chat/completions"),
                "type": "internal_server_error", "param": None, "code": None}})
            return
        if fault == "400":
            self._send(400, {"object": "error", "message": "This model's maximum context length is 4096 tokens.",
                             "type": "BadRequestError", "code": 400})
            return
        if fault == "html":
            page = b"<html><body>502 Bad Gateway</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return
        if fault == "drop":
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if fault == "timeout":  # the client gives up first; what it would have got is never delivered
            time.sleep(state.hang_s)
            self.close_connection = True
            return
        content = json.dumps(answer_for(body))
        finish = "stop"
        if fault == "malformed":
            content = "Sure! Here is the answer: {planning: oops"
        elif fault == "invalid":
            content = json.dumps({"planning": "only this"})
        elif fault == "length":
            content, finish = content[: len(content) // 2], "length"
        usage = {"prompt_tokens": 100, "completion_tokens": max(1, len(content) // 4),
                 "total_tokens": 100 + max(1, len(content) // 4)}
        try:
            self._send(200, {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                             "model": body.get("model", "fake"),
                             "choices": [{"index": 0, "finish_reason": finish,
                                          "message": {"role": "assistant", "content": content}}],
                             "usage": usage})
        except (BrokenPipeError, ConnectionResetError):
            return
        entry.answered_at = time.time()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the listen backlog: the default 5 drops bursts of new connections


class FakeOpenAIServer:
    """Serves on 127.0.0.1 in a background thread; `url` is the API root to give cotaforge."""

    def __init__(self, latency_s: float = 0.0, fault: Callable[[Request], str | None] | None = None,
                 port: int = 0, hang_s: float = 5.0, retry_after_s: float = 1.0) -> None:
        self.state = FakeState(latency_s=latency_s, fault=fault, hang_s=hang_s, retry_after_s=retry_after_s)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.httpd = _Server(("127.0.0.1", port), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @property
    def log(self) -> list[Seen]:
        return self.state.log

    def __enter__(self) -> "FakeOpenAIServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    args = parser.parse_args()
    server = FakeOpenAIServer(latency_s=args.latency_ms / 1000, port=args.port)
    server.state.record_bodies = False
    print(f"fake OpenAI server at {server.url}", flush=True)
    server.httpd.serve_forever()


if __name__ == "__main__":
    main()
