"""Every fault a long run meets, injected by a local OpenAI-compatible server: retried or rejected, never fatal
unless no endpoint can be reached at all."""

from __future__ import annotations

import json
import socket
import time

import pytest

from cotaforge.teacher.base import CotStages, TeacherFailure
from cotaforge.teacher.build import build_teacher
from cotaforge.teacher.client import TeacherUnavailable
from tests.teacher.conftest import cot_request, teacher_config


def once_per_prompt(fault: str):
    """Inject `fault` into the first request of each prompt (whatever its seed), then answer normally."""
    faulted: set[str] = set()

    def pick(request):
        prompt = json.dumps(request.body["messages"], sort_keys=True)
        if prompt in faulted:
            return None
        faulted.add(prompt)
        return fault

    return pick


def _run(tmp_path, urls, n=4, *overrides):
    teacher = build_teacher(teacher_config(tmp_path, urls, *overrides), "expand")
    return teacher, teacher.write_cots([cot_request(i) for i in range(n)])


@pytest.mark.parametrize("fault", ["500", "timeout", "drop"])
def test_transport_faults_are_retried_with_the_same_request(tmp_path, fake_server, fault):
    server = fake_server(fault=once_per_prompt(fault), hang_s=2.0)
    teacher, results = _run(tmp_path, [server.url])
    assert all(isinstance(r, CotStages) for r in results)
    keys = [seen.key for seen in server.log]
    assert len(keys) == 8 and len(set(keys)) == 4  # each request sent twice, with the same body
    assert teacher.usage.requests == 8 and teacher.usage.retries == 4 and teacher.usage.cache_misses == 4


def test_429_waits_for_retry_after(tmp_path, fake_server):
    server = fake_server(fault=once_per_prompt("429"), retry_after_s=0.6)
    teacher, results = _run(tmp_path, [server.url], 1)
    assert isinstance(results[0], CotStages)
    first, second = server.log
    assert first.fault == "429" and second.key == first.key
    assert second.received_at - first.received_at >= 0.6


@pytest.mark.parametrize("fault", ["malformed", "invalid", "length"])
def test_unusable_answers_are_asked_again_with_the_next_seed(tmp_path, fake_server, fault):
    server = fake_server(fault=once_per_prompt(fault))
    teacher, results = _run(tmp_path, [server.url], 3)
    assert all(isinstance(r, CotStages) for r in results)
    seeds = sorted((seen.body["messages"][1]["content"][:0], seen.body["seed"]) for seen in server.log)
    assert len(server.log) == 6 and len({seen.key for seen in server.log}) == 6  # distinct requests
    by_prompt: dict[str, list[int]] = {}
    for seen in server.log:
        by_prompt.setdefault(json.dumps(seen.body["messages"]), []).append(seen.body["seed"])
    assert all(b == a + 1 for a, b in (sorted(s) for s in by_prompt.values())), seeds
    assert teacher.usage.retries == 3 and teacher.usage.cache_misses == 6


@pytest.mark.parametrize("fault,reason", [("malformed", "teacher_invalid_output"), ("invalid", "teacher_invalid_output"),
                                          ("length", "teacher_truncated")])
def test_answers_that_stay_unusable_become_rejects_with_the_raw_output(tmp_path, fake_server, fault, reason):
    server = fake_server(fault=lambda request: fault)
    teacher, results = _run(tmp_path, [server.url], 2, "teacher.output_attempts=3")
    assert all(isinstance(r, TeacherFailure) and r.reason == reason for r in results)
    assert results[0].raw and "after 3 attempts" in results[0].message
    assert len(server.log) == 6 and teacher.usage.failures == 2


def test_server_errors_that_persist_become_rejects_after_bounded_retries(tmp_path, fake_server):
    server = fake_server(fault=lambda request: "500")
    teacher, results = _run(tmp_path, [server.url], 2, "teacher.retries=3")
    assert all(isinstance(r, TeacherFailure) and r.reason == "teacher_server_error" for r in results)
    assert "engine crashed" in results[0].raw and "after 4 attempts" in results[0].message
    assert len(server.log) == 8


def test_a_request_the_server_refuses_is_rejected_without_resending(tmp_path, fake_server):
    server = fake_server(fault=lambda request: "400" if "take 0." in request.body["messages"][1]["content"] else None)
    teacher, results = _run(tmp_path, [server.url], 3)
    refused, *others = results
    assert isinstance(refused, TeacherFailure) and refused.reason == "teacher_bad_request"
    assert "maximum context length" in refused.message and "maximum context length" in refused.raw
    assert all(isinstance(r, CotStages) for r in others)
    assert [seen.fault for seen in server.log].count("400") == 1  # resending it could not help


def test_a_5xx_that_refuses_the_request_body_is_a_bad_request_not_resent(tmp_path, fake_server):
    # llama-cpp-python's server answers a body its request schema refuses with HTTP 500 and a validation error.
    server = fake_server(fault=lambda request: "500_validation")
    teacher, results = _run(tmp_path, [server.url], 2, "teacher.retries=6")
    assert all(isinstance(r, TeacherFailure) and r.reason == "teacher_bad_request" for r in results)
    assert "teacher.structured_output=json_object" in results[0].message and "literal_error" in results[0].raw
    assert len(server.log) == 2 and teacher.usage.requests == 2 and teacher.usage.retries == 0


def test_a_200_that_is_not_json_is_retried(tmp_path, fake_server):
    server = fake_server(fault=once_per_prompt("html"))
    teacher, results = _run(tmp_path, [server.url], 2)
    assert all(isinstance(r, CotStages) for r in results)
    assert len(server.log) == 4 and teacher.usage.retries == 2


def test_plain_json_mode_repairs_once(tmp_path, fake_server):
    server = fake_server(fault=once_per_prompt("malformed"))
    teacher, results = _run(tmp_path, [server.url], 2, "teacher.structured_output=json")
    assert all(isinstance(r, CotStages) for r in results)
    assert all("response_format" not in seen.body for seen in server.log)
    repairs = [seen.body["messages"] for seen in server.log if len(seen.body["messages"]) == 4]
    assert len(repairs) == 2 and repairs[0][2]["role"] == "assistant" and "could not be used" in repairs[0][3]["content"]


def test_a_dead_endpoint_does_not_stop_the_run(tmp_path, fake_server):
    server = fake_server(latency_s=0.02)
    teacher, results = _run(tmp_path, [_closed_port_url(), server.url], 12)
    assert all(isinstance(r, CotStages) for r in results)
    assert len({seen.key for seen in server.log}) == 12


def test_a_slow_endpoint_does_not_stall_the_run(tmp_path, fake_server):
    slow = fake_server(latency_s=3.0)
    fast = fake_server(latency_s=0.02)
    started = time.monotonic()
    teacher, results = _run(tmp_path, [slow.url, fast.url], 12, "teacher.timeout_s=0.5")
    assert all(isinstance(r, CotStages) for r in results)
    assert time.monotonic() - started < 2.5  # not the slow server's 3 s
    assert len(fast.log) >= 12


def test_no_reachable_endpoint_stops_the_run_with_a_clear_error(tmp_path):
    teacher = build_teacher(teacher_config(tmp_path, [_closed_port_url()], "teacher.retries=2"), "expand")
    with pytest.raises(TeacherUnavailable, match="no teacher endpoint answered after 3 attempts"):
        teacher.write_cots([cot_request(0)])


def test_a_wrong_model_name_stops_the_run(tmp_path, fake_server):
    server = fake_server()
    server.state.fault = lambda request: None
    teacher = build_teacher(teacher_config(tmp_path, [server.url.replace("/v1", "/nowhere")]), "expand")
    with pytest.raises(TeacherUnavailable, match="HTTP 404"):
        teacher.write_cots([cot_request(0)])


def test_limits_hold_across_batches_running_at_once(tmp_path, fake_server):
    import threading

    server = fake_server(latency_s=0.1)
    cfg = teacher_config(tmp_path, [server.url], "teacher.concurrency_per_endpoint=3")
    peak, current, lock = 0, 0, threading.Lock()
    original = server.state.fault

    def track(request):
        nonlocal peak, current
        with lock:
            current += 1
            peak = max(peak, current)
        threading.Timer(0.09, _dec).start()
        return original(request) if original else None

    def _dec():
        nonlocal current
        with lock:
            current -= 1

    server.state.fault = track
    threads = [threading.Thread(target=lambda k=k: build_teacher(cfg, "expand").write_cots(
        [cot_request(100 * k + i) for i in range(6)])) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(server.log) == 18 and peak <= 3


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
