"""The client side of an OpenAI-compatible teacher (vLLM, llama.cpp): endpoints, limits, retries and the cache.

One `ChatClient` per process and configuration, shared by every batch a flow runs at once: its requests
run on one background event loop, so the per-endpoint concurrency limit and the requests/min and
tokens/min limits hold for the whole run, not per batch. A request goes to the endpoint with the most
free capacity; an endpoint that refuses connections rests for a while and its requests go elsewhere, and
a retry after a timeout or a 5xx avoids the endpoint that failed, so one slow or dead server does not stall
the run. Retries: 429 (after its Retry-After), 5xx, timeouts and connection errors, with exponential
backoff and jitter, at most `teacher.retries` times; a 5xx whose body is a validation error of the request
(llama-cpp-python's answer to a `json_schema` request) is the request's fault, like a 400, and is not resent.
For chat formats without a system role (`teacher.system_role`), the system message is folded into the first
user turn before the request is hashed for the cache and sent.

Requests go out with aiohttp, one connection pool per endpoint: a chat completion is one JSON POST, and
sending it directly costs about a third of the CPU the OpenAI SDK spends on the same request (its request
models and its httpx layer over the same aiohttp), which is what keeps 64+ requests per endpoint in flight
on a small client machine. The bodies are exactly what the OpenAI SDK would send.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import random
import re
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Awaitable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from cotaforge.config import RunConfig
from cotaforge.errors import CotaforgeError
from cotaforge.teacher.cache import CachedAnswer, ResponseCache, request_key

T = TypeVar("T")
AUDIO_PART_TOKENS = 750  # what a 30 s clip costs an audio model (Qwen2-Audio: 25 tokens/s), for the tokens/min limit
ENDPOINT_REST_MAX_S = 30.0


class TeacherUnavailable(CotaforgeError):
    """No endpoint answered after every retry: the run cannot go on."""


@dataclass(frozen=True)
class ChatAnswer:
    """One answered request; `sends` counts the HTTP requests it took (0 when replayed from the cache)."""

    content: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    sends: int


class TransportFailure(Exception):
    """A request that got no usable HTTP answer after its retries; it becomes a reject row."""

    def __init__(self, reason: str, message: str, raw: str = "", sends: int = 0) -> None:
        super().__init__(message)
        self.reason, self.message, self.raw, self.sends = reason, message, raw, sends


_NO_SYSTEM_ROLE_MODELS = re.compile(r"gemma", re.IGNORECASE)  # chat formats with no system turn


def sends_system_role(model: str, setting: bool | str) -> bool:
    """Whether requests to `model` keep their system message (`teacher.system_role`; auto: not for Gemma)."""
    if setting == "auto":
        return _NO_SYSTEM_ROLE_MODELS.search(model) is None
    return bool(setting)


def fold_system_message(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation with its system text moved to the start of the first user turn.

    For chat formats without a system role: llama-cpp-python's `gemma` format drops a system message
    outright, so the instructions and the JSON schema would never reach the model. The user turn's audio
    parts, if any, stay where they are; the instructions go before its text.
    """
    system = "\n\n".join(str(m.get("content") or "") for m in messages if m.get("role") == "system")
    rest = [m for m in messages if m.get("role") != "system"]
    if not system:
        return rest
    for index, message in enumerate(rest):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, list):
            texts = [i for i, part in enumerate(content) if part.get("type") == "text"]
            parts = list(content)
            if texts:
                first = parts[texts[0]]
                parts[texts[0]] = {**first, "text": f"{system}\n\n{first.get('text', '')}"}
            else:
                parts.insert(0, {"type": "text", "text": system})
            folded = {**message, "content": parts}
        else:
            folded = {**message, "content": f"{system}\n\n{content or ''}"}
        return rest[:index] + [folded] + rest[index + 1:]
    return [{"role": "user", "content": system}, *rest]


def prepared_body(body: dict[str, Any], system_role: bool) -> dict[str, Any]:
    """The body as it is sent and cached: with the system message folded in where the model has no system role."""
    if system_role or not any(m.get("role") == "system" for m in body.get("messages", [])):
        return body
    return {**body, "messages": fold_system_message(body["messages"])}


@dataclass(frozen=True)
class ClientSettings:
    base_urls: tuple[str, ...]
    api_key_env: str
    concurrency_per_endpoint: int
    requests_per_min: float | None
    tokens_per_min: float | None
    timeout_s: float
    connect_timeout_s: float
    retries: int
    backoff_s: float
    backoff_max_s: float
    cache_path: Path | None
    system_role: bool = True

    @classmethod
    def from_config(cls, cfg: RunConfig) -> "ClientSettings":
        t = cfg.teacher
        return cls(tuple(t.base_urls), t.api_key_env, t.concurrency_per_endpoint, t.requests_per_min,
                   t.tokens_per_min, t.timeout_s, t.connect_timeout_s, t.retries, t.backoff_s, t.backoff_max_s,
                   (cfg.teacher_cache_dir / "responses.sqlite").resolve() if t.cache else None,
                   sends_system_role(t.model, t.system_role))


def backoff_delay_s(retry: int, base_s: float, max_s: float, retry_after_s: float | None = None,
                    rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number `retry` (0-based): the server's Retry-After when it gave one,
    else exponential backoff with jitter in [half, full], so many clients do not retry in lockstep."""
    rng = rng or random
    if retry_after_s is not None and retry_after_s >= 0:
        return min(retry_after_s, max(max_s, retry_after_s)) + rng.uniform(0, 0.1 * base_s)
    ceiling = min(max_s, base_s * 2 ** retry)
    return rng.uniform(ceiling / 2, ceiling)


def retry_after_s(headers: Any) -> float | None:
    """Retry-After in seconds (the delta form; vLLM and proxies send that), None when absent or unreadable."""
    value = headers.get("retry-after") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def estimate_tokens(body: dict[str, Any]) -> int:
    """Prompt tokens (about 4 characters each) plus the completion budget, for the tokens/min limit."""
    chars, audio_parts = 0, 0
    for message in body.get("messages", []):
        content = message.get("content")
        parts = content if isinstance(content, list) else [{"type": "text", "text": content or ""}]
        for part in parts:
            if part.get("type") == "input_audio":
                audio_parts += 1
            else:
                chars += len(part.get("text", ""))
    return chars // 4 + audio_parts * AUDIO_PART_TOKENS + int(body.get("max_tokens") or 0)


class RateLimiter:
    """A token bucket refilled continuously at `per_min / 60` per second; callers wait in arrival order."""

    def __init__(self, per_min: float) -> None:
        self.capacity = per_min
        self.rate_per_s = per_min / 60.0
        self.level = per_min
        self.updated = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate_per_s)
        self.updated = now

    async def acquire(self, amount: float) -> None:
        amount = min(amount, self.capacity)  # a request larger than a minute's budget waits for a full bucket
        async with self._lock:
            self._refill()
            while self.level < amount:
                await asyncio.sleep((amount - self.level) / self.rate_per_s)
                self._refill()
            self.level -= amount

    def refund(self, amount: float) -> None:
        """Give back an over-estimate (or charge an under-estimate, when negative) once the real count is known."""
        self._refill()
        self.level = min(self.capacity, self.level + amount)


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTP_PROXY / HTTPS_PROXY, honouring NO_PROXY), as the OpenAI
    SDK would use. Looked up once per endpoint: aiohttp's own per-request lookup (trust_env) costs about half
    as much CPU as the rest of sending a request."""
    parts = urllib.parse.urlsplit(url)
    if urllib.request.proxy_bypass_environment(parts.hostname or ""):
        return None
    return urllib.request.getproxies_environment().get(parts.scheme)


class Endpoint:
    """One server: its request slots and health, and its HTTP connections (opened on first use, on the
    client's event loop, since an aiohttp session belongs to the loop that made it)."""

    def __init__(self, url: str, limit: int, headers: dict[str, str] | None = None, timeout_s: float = 600.0,
                 connect_timeout_s: float = 10.0) -> None:
        self.url, self.limit = url, limit
        self.chat_url = url.rstrip("/") + "/chat/completions"
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self.proxy = proxy_for(url)
        self.session: aiohttp.ClientSession | None = None
        self.in_flight = 0
        self.rest_until = 0.0  # monotonic time before which no request is sent here
        self.strikes = 0  # consecutive connection failures; the rest doubles with each
        self.latency_s = 0.0  # moving average of answered requests

    async def post(self, body: dict[str, Any]) -> tuple[int, float | None, bytes]:
        """POST one chat request: (HTTP status, Retry-After seconds or None, response body)."""
        if self.session is None:
            # Idle connections close after 4 s, before vLLM's server (uvicorn, 5 s keep-alive) closes them under a
            # request just sent on one.
            connector = aiohttp.TCPConnector(limit=self.limit + 8, limit_per_host=0, keepalive_timeout=4)
            self.session = aiohttp.ClientSession(connector=connector, timeout=self.timeout)
        async with self.session.post(self.chat_url, data=json.dumps(body).encode(), headers=self.headers,
                                     proxy=self.proxy) as response:
            return response.status, retry_after_s(response.headers), await response.read()

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


class EndpointPool:
    """Hands out endpoints with free capacity; callers wait, first come first served, when all are full.

    One semaphore counts the free slots of all endpoints (cheap with thousands of waiting requests); a caller
    that gets a slot takes the least loaded endpoint that is not resting, and polls briefly while every
    endpoint with room is resting.
    """

    def __init__(self, endpoints: list[Endpoint]) -> None:
        self.endpoints = endpoints
        self._slots = asyncio.Semaphore(sum(e.limit for e in endpoints))

    async def acquire(self, avoid: Endpoint | None = None) -> Endpoint:
        await self._slots.acquire()
        try:
            while True:
                now = time.monotonic()
                ready = [e for e in self.endpoints if e.in_flight < e.limit and e.rest_until <= now]
                if avoid is not None and len(ready) > 1:
                    ready = [e for e in ready if e is not avoid] or ready
                if ready:
                    chosen = min(ready, key=lambda e: (e.in_flight / e.limit, e.latency_s))
                    chosen.in_flight += 1
                    return chosen
                resting = [e.rest_until - now for e in self.endpoints if e.in_flight < e.limit]
                await asyncio.sleep(min(min(resting, default=0.05), 0.05))
        except BaseException:
            self._slots.release()
            raise

    async def release(self, endpoint: Endpoint, latency_s: float | None = None, reachable: bool = True) -> None:
        endpoint.in_flight -= 1
        if latency_s is not None:
            endpoint.latency_s = latency_s if endpoint.latency_s == 0 else 0.8 * endpoint.latency_s + 0.2 * latency_s
        now = time.monotonic()
        if reachable:
            endpoint.strikes = 0
        elif endpoint.rest_until <= now:  # requests failing together while it rests count as one strike
            endpoint.strikes += 1
            endpoint.rest_until = now + min(ENDPOINT_REST_MAX_S, 0.5 * 2 ** endpoint.strikes)
        self._slots.release()


class ChatClient:
    """Sends chat requests to the endpoints with limits, retries and the response cache."""

    def __init__(self, settings: ClientSettings) -> None:
        if not settings.base_urls:
            raise CotaforgeError("the openai teacher needs at least one base URL (--base-url or teacher.base_urls)")
        self.settings = settings
        api_key = os.environ.get(settings.api_key_env)  # vLLM and llama.cpp need none by default
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.pool = EndpointPool([Endpoint(url, settings.concurrency_per_endpoint, headers, settings.timeout_s,
                                           settings.connect_timeout_s) for url in settings.base_urls])
        self.rpm = RateLimiter(settings.requests_per_min) if settings.requests_per_min else None
        self.tpm = RateLimiter(settings.tokens_per_min) if settings.tokens_per_min else None
        self.cache = ResponseCache(settings.cache_path) if settings.cache_path else None

    @property
    def capacity(self) -> int:
        """Requests that can be in flight at once, over all endpoints."""
        return sum(endpoint.limit for endpoint in self.pool.endpoints)

    async def fetch(self, body: dict[str, Any], prompt_version: str, task: str = "") -> ChatAnswer:
        """The answer to one request body: from the cache, else from an endpoint (then cached at once).

        Raises TransportFailure when retries run out on 429/5xx/timeouts or on a 4xx the request itself
        caused, and TeacherUnavailable when no endpoint could be reached at all.
        """
        body = prepared_body(body, self.settings.system_role)  # what is sent is what is cached
        key = request_key(body, prompt_version)
        if self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None:
                return ChatAnswer(cached.content, cached.finish_reason, cached.prompt_tokens,
                                  cached.completion_tokens, cached=True, sends=0)
        s = self.settings
        estimate = estimate_tokens(body)
        endpoint: Endpoint | None = None
        sends = 0
        for retry in range(s.retries + 1):
            if self.rpm:
                await self.rpm.acquire(1)
            if self.tpm:
                await self.tpm.acquire(estimate)
            endpoint = await self.pool.acquire(avoid=endpoint)
            started = time.monotonic()
            reachable, completion = True, None
            wait_s: float | None = None
            sends += 1
            try:
                status, wait_s, payload = await endpoint.post(body)
            except asyncio.CancelledError:
                await self.pool.release(endpoint)  # the run is stopping: give the slot back for other batches
                raise
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                reachable = False  # no connection at all: the server is down, not slow
                failure = TransportFailure("teacher_unreachable", f"{endpoint.url}: {str(exc)[:300]}")
            except TimeoutError:
                failure = TransportFailure("teacher_timeout", f"{endpoint.url}: no answer within {s.timeout_s:g} s")
            except aiohttp.ClientError as exc:  # dropped connection, broken response
                failure = TransportFailure("teacher_connection_lost", f"{endpoint.url}: {(str(exc) or repr(exc))[:300]}")
            else:
                completion, failure = _read_answer(endpoint.url, status, payload)
                if status in (401, 403, 404):
                    await self.pool.release(endpoint)
                    raise TeacherUnavailable(f"{failure.message}: check teacher.model (the served model's name) "
                                             f"and the API key in ${s.api_key_env}")
                if failure is not None and failure.reason == "teacher_bad_request":
                    await self.pool.release(endpoint)
                    failure.sends = sends
                    raise failure  # the request itself is at fault: resending it cannot help
            latency_s = time.monotonic() - started
            answered = completion is not None
            await self.pool.release(endpoint, latency_s if answered else None, reachable)
            # Let the request waiting for this slot go out before this one's bookkeeping (cache write, parsing,
            # the next prompt): answers arrive in bursts, and the slot would otherwise idle through all of it.
            await asyncio.sleep(0)
            if answered:
                choice = (completion.get("choices") or [{}])[0]
                usage = completion.get("usage") or {}
                answer = CachedAnswer(
                    content=(choice.get("message") or {}).get("content") or "",
                    finish_reason=choice.get("finish_reason") or "",
                    prompt_tokens=int(usage.get("prompt_tokens") or 0),
                    completion_tokens=int(usage.get("completion_tokens") or 0))
                if self.tpm:
                    self.tpm.refund(estimate - answer.prompt_tokens - answer.completion_tokens)
                if self.cache is not None:
                    self.cache.put(key, answer, task)  # before anyone sees it: a crash after this loses nothing
                return ChatAnswer(answer.content, answer.finish_reason, answer.prompt_tokens,
                                  answer.completion_tokens, cached=False, sends=sends)
            if retry < s.retries:
                await asyncio.sleep(backoff_delay_s(retry, s.backoff_s, s.backoff_max_s, wait_s))
        if failure.reason == "teacher_unreachable":
            urls = ", ".join(s.base_urls)
            raise TeacherUnavailable(f"no teacher endpoint answered after {sends} attempts ({urls}); last error: "
                                     f"{failure.message}. Start the server (`cotaforge teacher serve`) or fix --base-url")
        failure.sends = sends
        failure.message = f"{failure.message} (after {sends} attempts)"
        raise failure

    def run(self, coroutines: list[Awaitable[T]]) -> list[T]:
        """Run coroutines on the shared loop and wait for all; the first TeacherUnavailable cancels the rest."""
        if not coroutines:
            return []
        return _loop().submit(_gather_or_cancel(coroutines)).result()


def _error_message(raw: str) -> str:
    """The message of a JSON error body (OpenAI's `{"error": {"message"}}` or vLLM's top-level `message`),
    else the body's start."""
    try:
        data = json.loads(raw)
        error = data.get("error")
        message = error.get("message") if isinstance(error, dict) else error or data.get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or raw.strip() or "no body")[:300]


def _read_answer(url: str, status: int, payload: bytes) -> tuple[dict[str, Any] | None, TransportFailure | None]:
    """(completion, None) for a usable 2xx, else (None, the failure): 429 rate limited, 5xx (and 408/409) server
    errors to retry, other 4xx the request's own fault, and so is a 5xx whose body is a validation error of the
    request body. Error bodies are kept (4000 characters) for the reject row."""
    if 200 <= status < 300:
        try:
            completion = json.loads(payload)
        except ValueError:
            completion = None
        if isinstance(completion, dict):
            return completion, None
    raw = payload[:4000].decode("utf-8", errors="replace")
    if 200 <= status < 300:
        return None, TransportFailure("teacher_server_error", f"{url}: HTTP {status} with a body that is not a JSON "
                                                              "object", raw)
    message = f"{url}: HTTP {status} {_error_message(raw)}"
    if status == 429:
        return None, TransportFailure("teacher_rate_limited", message, raw)
    unescaped = raw.replace('\\"', '"')  # the validation text inside a JSON string
    if status >= 500 and _REQUEST_VALIDATION.search(unescaped) and _BODY_FIELD.search(unescaped):
        # llama-cpp-python's server answers a request its schema refuses (e.g. response_format json_schema)
        # with HTTP 500: resending the same body gets the same answer.
        if "response_format" in raw:
            message += ("; this server does not take this response_format: set teacher.structured_output="
                        "json_object (llama-cpp-python's server) or json")
        return None, TransportFailure("teacher_bad_request", message, raw)
    if status >= 500 or status in (408, 409):
        return None, TransportFailure("teacher_server_error", message, raw)
    return None, TransportFailure("teacher_bad_request", message, raw)


# A FastAPI/pydantic request-validation error: "1 validation error: {'loc': ('body', 'response_format', ...)".
_REQUEST_VALIDATION = re.compile(r"\bvalidation errors?\b", re.IGNORECASE)
_BODY_FIELD = re.compile(r"""loc['"]?\s*[:=]\s*[(\[]\s*['"]body['"]""")


async def _gather_or_cancel(coroutines: list[Awaitable[T]]) -> list[T]:
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


class _LoopThread:
    """One event loop in a daemon thread: every batch's requests share its clients, pools and limits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="cotaforge-teacher", daemon=True)
        self.thread.start()

    def submit(self, coroutine: Awaitable[T]) -> Future:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)  # type: ignore[arg-type]


_LOOP: _LoopThread | None = None
_CLIENTS: dict[ClientSettings, ChatClient] = {}
_LOCK = threading.Lock()


def _loop() -> _LoopThread:
    global _LOOP
    with _LOCK:
        if _LOOP is None:
            _LOOP = _LoopThread()
            atexit.register(_close_clients)
        return _LOOP


def _close_clients() -> None:
    """Close every client's connections before the interpreter exits (aiohttp warns about open sessions)."""
    if _LOOP is None:
        return
    closing = [endpoint.close() for client in _CLIENTS.values() for endpoint in client.pool.endpoints]

    async def close_all() -> None:
        await asyncio.gather(*closing, return_exceptions=True)

    try:
        _LOOP.submit(close_all()).result(timeout=5)
    except Exception:  # noqa: BLE001 - best effort at exit
        pass


def shared_client(settings: ClientSettings) -> ChatClient:
    """The process's client for these settings (created once, so limits and connections are shared)."""
    with _LOCK:
        if settings not in _CLIENTS:
            _CLIENTS[settings] = ChatClient(settings)
        return _CLIENTS[settings]


def request_body(model: str, messages: list[dict[str, Any]], max_tokens: int, temperature: float, seed: int,
                 response_format: dict[str, Any] | None) -> dict[str, Any]:
    """The JSON body of a chat request, as sent and as hashed for the cache."""
    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens,
                            "temperature": temperature, "seed": seed}
    if response_format is not None:
        body["response_format"] = response_format
    return body
