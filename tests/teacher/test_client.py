"""Client policies without a server: backoff, Retry-After, token estimates, rate limits, endpoint choice."""

from __future__ import annotations

import asyncio
import json
import random
import time

import pytest

from cotaforge.teacher.client import (AUDIO_PART_TOKENS, Endpoint, EndpointPool, RateLimiter, _read_answer,
                                      backoff_delay_s, estimate_tokens, proxy_for, retry_after_s)


def test_backoff_grows_exponentially_with_jitter_and_a_ceiling():
    rng = random.Random(0)
    for retry in range(8):
        ceiling = min(30.0, 1.0 * 2 ** retry)
        delays = [backoff_delay_s(retry, 1.0, 30.0, rng=rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jitter: clients do not retry in lockstep


def test_retry_after_is_honoured():
    assert 7.0 <= backoff_delay_s(0, 1.0, 60.0, retry_after_s=7.0) <= 7.1
    assert 90.0 <= backoff_delay_s(0, 1.0, 60.0, retry_after_s=90.0) <= 90.1  # the server knows best
    assert retry_after_s({"retry-after": "3"}) == 3.0
    assert retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None
    assert retry_after_s({}) is None


def test_token_estimate_counts_text_audio_and_the_completion_budget():
    body = {"max_tokens": 100, "messages": [
        {"role": "system", "content": "x" * 400},
        {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "A" * 10_000, "format": "wav"}},
                                     {"type": "text", "text": "y" * 40}]}]}
    assert estimate_tokens(body) == 100 + 10 + AUDIO_PART_TOKENS + 100


def test_rate_limiter_spaces_requests_beyond_the_burst():
    async def scenario() -> float:
        limiter = RateLimiter(per_min=600)  # 10 per second, a burst of 600
        limiter.level = 0  # empty bucket: every acquire waits for the refill
        started = time.monotonic()
        for _ in range(5):
            await limiter.acquire(1)
        return time.monotonic() - started

    elapsed_s = asyncio.run(scenario())
    assert 0.4 <= elapsed_s <= 1.0


def test_rate_limiter_refund_returns_an_overestimate():
    limiter = RateLimiter(per_min=1000)
    asyncio.run(limiter.acquire(800))
    limiter.refund(500)
    assert 690 <= limiter.level <= 710


def _pool(*limits: int) -> EndpointPool:
    return EndpointPool([Endpoint(f"http://e{i}", limit) for i, limit in enumerate(limits)])


def test_requests_spread_across_endpoints_by_free_capacity():
    async def scenario() -> list[str]:
        pool = _pool(4, 4)
        return [(await pool.acquire()).url for _ in range(8)]

    urls = asyncio.run(scenario())
    assert urls.count("http://e0") == 4 and urls.count("http://e1") == 4


def test_a_full_pool_waits_and_a_release_wakes_it():
    async def scenario() -> bool:
        pool = _pool(1)
        first = await pool.acquire()
        waiter = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0.05)
        blocked = not waiter.done()
        await pool.release(first, 0.1)
        await asyncio.wait_for(waiter, 1)
        return blocked

    assert asyncio.run(scenario())


def test_an_unreachable_endpoint_rests_and_a_retry_avoids_the_one_that_failed():
    async def scenario() -> tuple[str, list[str]]:
        pool = _pool(8, 8)
        e0 = await pool.acquire()
        retry = await pool.acquire(avoid=e0)
        await pool.release(retry)
        await pool.release(e0, reachable=False)  # connection refused: e0 rests
        return retry.url, [(await pool.acquire()).url for _ in range(6)]

    retry_url, later = asyncio.run(scenario())
    assert retry_url == "http://e1"
    assert set(later) == {"http://e1"}


def test_a_slow_endpoint_gets_less_once_both_have_room():
    async def scenario() -> str:
        pool = _pool(8, 8)
        fast, slow = pool.endpoints
        fast.latency_s, slow.latency_s = 0.1, 5.0
        return (await pool.acquire()).url

    assert asyncio.run(scenario()) == "http://e0"


@pytest.mark.parametrize("limit", [1, 3])
def test_concurrency_never_exceeds_the_limit(limit):
    async def scenario() -> int:
        pool = _pool(limit)
        peak = 0

        async def one() -> None:
            nonlocal peak
            endpoint = await pool.acquire()
            peak = max(peak, endpoint.in_flight)
            await asyncio.sleep(0.01)
            await pool.release(endpoint, 0.01)

        await asyncio.gather(*(one() for _ in range(12)))
        return peak

    assert asyncio.run(scenario()) == limit


def test_requests_failing_together_count_as_one_strike():
    async def scenario() -> tuple[int, float]:
        pool = _pool(8)
        taken = [await pool.acquire() for _ in range(5)]
        for endpoint in taken:
            await pool.release(endpoint, reachable=False)
        endpoint = pool.endpoints[0]
        return endpoint.strikes, endpoint.rest_until - time.monotonic()

    strikes, rest_s = asyncio.run(scenario())
    assert strikes == 1 and 0 < rest_s <= 1.0


def test_endpoints_use_the_proxy_the_environment_names_except_for_no_proxy_hosts(monkeypatch):
    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert proxy_for("http://gpu1:8000/v1") is None
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("HTTPS_PROXY", "http://secure-proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1,.cluster.local")
    assert proxy_for("http://gpu1:8000/v1") == "http://proxy.internal:3128"
    assert proxy_for("https://api.example.com/v1") == "http://secure-proxy.internal:3128"
    assert proxy_for("http://127.0.0.1:8000/v1") is None
    assert proxy_for("http://vllm-0.cluster.local:8000/v1") is None
    assert Endpoint("http://gpu1:8000/v1", 4).proxy == "http://proxy.internal:3128"


@pytest.mark.parametrize("status,body,reason", [
    # llama-cpp-python: FastAPI's RequestValidationError, wrapped as an internal error
    (500, {"error": {"message": "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', "
                                "'type'), 'msg': \"Input should be 'text' or 'json_object'\"}",
                     "type": "internal_server_error"}}, "teacher_bad_request"),
    # the same error as pydantic's JSON form
    (503, {"detail": [{"type": "missing", "loc": ["body", "messages"], "msg": "Field required"}],
           "message": "1 validation error for ChatCompletionRequest"}, "teacher_bad_request"),
    # a server fault that mentions validation, not of the request body: still retried
    (500, {"error": {"message": "1 validation error for ChatCompletionResponse: choices.0.logprobs"}},
     "teacher_server_error"),
    (500, {"error": {"message": "engine crashed"}}, "teacher_server_error"),
])
def test_a_5xx_is_a_bad_request_only_when_it_refuses_the_request_body(status, body, reason):
    completion, failure = _read_answer("http://a:1/v1", status, json.dumps(body).encode())
    assert completion is None and failure.reason == reason
