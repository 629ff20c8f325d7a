"""The response cache: keyed by the whole request, durable at once, shared across instances and threads."""

from __future__ import annotations

import subprocess
import sys
import threading

from cotaforge.teacher.cache import CachedAnswer, ResponseCache, request_key

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 64, "temperature": 0.7,
        "seed": 1, "response_format": {"type": "json_schema", "json_schema": {"name": "cot", "schema": {}}}}


def test_the_key_changes_with_anything_that_changes_the_request():
    base = request_key(BODY, "cot_llm.v1")
    assert request_key(dict(BODY), "cot_llm.v1") == base and len(base) == 64
    for change in ({"model": "m2"}, {"seed": 2}, {"temperature": 0.0}, {"max_tokens": 65},
                   {"messages": [{"role": "user", "content": "hi!"}]},
                   {"response_format": {"type": "json_object", "schema": {}}}):
        assert request_key({**BODY, **change}, "cot_llm.v1") != base, change
    assert request_key(BODY, "cot_llm.v2") != base


def test_answers_survive_a_new_instance_and_a_killed_writer(tmp_path):
    path = tmp_path / "cache" / "responses.sqlite"
    cache = ResponseCache(path)
    cache.put("k1", CachedAnswer('{"a": 1}', "stop", 10, 5), "cot")
    assert ResponseCache(path).get("k1") == CachedAnswer('{"a": 1}', "stop", 10, 5)
    assert ResponseCache(path).get("missing") is None
    # A process that writes and is then killed with SIGKILL: what it committed is there.
    code = ("import os, signal\nfrom cotaforge.teacher.cache import CachedAnswer, ResponseCache\n"
            f"c = ResponseCache({str(path)!r})\nc.put('k2', CachedAnswer('x', 'length', 1, 2))\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, "-c", code], check=False)
    assert ResponseCache(path).get("k2") == CachedAnswer("x", "length", 1, 2)
    assert len(ResponseCache(path)) == 2


def test_threads_share_one_cache(tmp_path):
    cache = ResponseCache(tmp_path / "r.sqlite")

    def write(start: int) -> None:
        for i in range(start, start + 50):
            cache.put(f"k{i}", CachedAnswer(str(i), "stop", i, i))

    threads = [threading.Thread(target=write, args=(n * 50,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cache) == 200 and cache.get("k123") == CachedAnswer("123", "stop", 123, 123)
