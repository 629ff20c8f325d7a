"""Teacher benchmarks: orchestration overhead of the openai teacher, and tokens/s against the local llama.cpp server.

    .venv/bin/python benchmarks/bench_teacher.py                     # both
    .venv/bin/python benchmarks/bench_teacher.py overhead --concurrency 64 --latency-ms 200 --rounds 3
    .venv/bin/python benchmarks/bench_teacher.py llama --requests 6

Overhead: an OpenAI-compatible server with a fixed latency (aiohttp, in its own process, with the answers of
tests/teacher/fake_openai.py) answers (1) the expand stage of a real run of the example clips (the demo's 362
clips in one batch, about 3,600 requests, so `concurrency` requests stay in flight), with the openai teacher and
a fresh response cache, timed from the stage's start to its part file on disk; and (2) a bare asyncio load
generator (aiohttp, a semaphore of `concurrency`) replaying the very request bodies the stage sent, as raw
bytes, so both put the same work on the server. Each round runs both; the figures are the median round.
Figures: requests/s of each, the pipeline's ratio to the bare generator (target at least 95%), and the CPU
time of this process per request (target at most 2 ms; the server's CPU is not counted).

Llama: the Gemma 3 270M GGUF on the llama.cpp server (`cotaforge teacher serve --local`'s setup). Its own
single-stream tokens/s (one short free-text request at a time, completion tokens over wall time); the teacher
writing chains of thought through it (concurrency 1: the server decodes one request at a time); and the server
alone replaying those same requests (long prompts, grammar-constrained JSON) one at a time, which is the figure
the pipeline's tokens/s should match.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cotaforge.config import load_config  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(port: int, latency_ms: float) -> None:
    """The benchmark's server: aiohttp, a fixed latency, good answers (from tests/teacher/fake_openai.py).
    An event-loop server, so its own CPU per request (it shares this machine's cores) stays small. It keeps
    the raw request bodies it received, for the bare generator to replay (GET /bench/bodies, then cleared)."""
    from aiohttp import web

    from tests.teacher.fake_openai import answer_for

    received: list[bytes] = []

    async def chat(request: web.Request) -> web.Response:
        raw = await request.read()
        received.append(raw)
        body = json.loads(raw)
        await asyncio.sleep(latency_ms / 1000)
        content = json.dumps(answer_for(body))
        return web.json_response({
            "id": "bench", "object": "chat.completion", "created": 0, "model": body.get("model", "bench"),
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 400, "completion_tokens": len(content) // 4,
                      "total_tokens": 400 + len(content) // 4}})

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "bench", "object": "model"}]})

    async def bodies(request: web.Request) -> web.Response:
        taken = [raw.decode() for raw in received]
        received.clear()
        return web.json_response(taken)

    app = web.Application()
    app.add_routes([web.post("/v1/chat/completions", chat), web.get("/v1/models", models),
                    web.get("/bench/bodies", bodies)])
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, backlog=1024)


def _fake_server(latency_ms: float) -> tuple[subprocess.Popen, str]:
    from cotaforge.teacher.serve import wait_healthy

    port = _free_port()
    process = subprocess.Popen([sys.executable, __file__, "serve", "--port", str(port), "--latency-ms", str(latency_ms)],
                               cwd=ROOT, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    wait_healthy(url, process, timeout_s=60)
    return process, url


def _received_bodies(url: str) -> list[bytes]:
    """The bodies the server received since the last call, as the raw bytes that were sent."""
    import httpx

    return [raw.encode() for raw in httpx.get(url.removesuffix("/v1") + "/bench/bodies", timeout=60).json()]


async def _bare(url: str, bodies: list[bytes], concurrency: int) -> float:
    """The load generator to beat: aiohttp (the cheapest asyncio HTTP client here), a semaphore, bodies
    already serialized."""
    import aiohttp

    gate = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency + 8)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one(body: bytes) -> None:
            async with gate:
                async with session.post(f"{url}/chat/completions", data=body, headers=headers) as response:
                    await response.json()

        started = time.perf_counter()
        await asyncio.gather(*(one(body) for body in bodies))
        return time.perf_counter() - started


def _demo_run(out_dir: Path, url: str, concurrency: int):
    """Ingest and caption the example clips into one batch (library functions, no Prefect)."""
    from cotaforge.stages.caption import run_caption
    from cotaforge.stages.ingest import run_ingest

    cfg = load_config(ROOT / "configs" / "demo.yaml",
                      [f"run.out_dir={out_dir}", "run.batch_size=1000", "run.name=bench-teacher",
                       f"teacher.concurrency_per_endpoint={concurrency}"],
                      teacher__backend="openai", teacher__base_urls=[url], teacher__model="bench")
    template = cfg.model_copy(update={"teacher": load_config(None, []).teacher})
    run, _ = run_ingest(template)
    run_caption(run, template)
    return cfg, run


def overhead(concurrency: int, latency_ms: float, rounds: int) -> dict:
    from cotaforge.stages.expand import run_expand
    from cotaforge.teacher.build import build_teacher
    from tests.teacher.conftest import cot_request

    server, url = _fake_server(latency_ms)
    out_dir = Path(tempfile.mkdtemp(prefix="bench-teacher-"))
    measured = []
    try:
        cfg, run = _demo_run(out_dir, url, concurrency)
        # Warm up the client (imports, connections) on a throwaway request so neither side pays start-up.
        build_teacher(cfg, "expand").write_cots([cot_request(-1)])
        _received_bodies(url)
        for round_ in range(rounds):
            # A fresh response cache and no expand output: every request of the stage is sent.
            round_cfg = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(
                update={"cache_dir": out_dir / f"cache-{round_}"})})
            run.part_path("expand", 0).unlink(missing_ok=True)
            cpu0, wall0 = time.process_time(), time.perf_counter()
            report = run_expand(run, round_cfg)
            pipeline_s, pipeline_cpu_s = time.perf_counter() - wall0, time.process_time() - cpu0
            bodies = _received_bodies(url)
            assert len(bodies) == report.teacher.requests, (len(bodies), report.teacher.requests)
            cpu0 = time.process_time()
            bare_s = asyncio.run(_bare(url, bodies, concurrency))
            bare_cpu_s = time.process_time() - cpu0
            _received_bodies(url)
            n = len(bodies)
            measured.append({"pipeline_vs_bare": round(bare_s / pipeline_s, 3),
                             "pipeline_requests_per_s": round(n / pipeline_s, 1),
                             "bare_requests_per_s": round(n / bare_s, 1),
                             "pipeline_cpu_ms_per_request": round(1000 * pipeline_cpu_s / n, 3),
                             "bare_cpu_ms_per_request": round(1000 * bare_cpu_s / n, 3),
                             "requests": n, "samples_out": report.rows_out})
            print(json.dumps({"round": round_ + 1, **measured[-1]}), file=sys.stderr, flush=True)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(out_dir, ignore_errors=True)
    median = sorted(measured, key=lambda m: m["pipeline_vs_bare"])[len(measured) // 2]
    return {"concurrency": concurrency, "latency_ms": latency_ms, "rounds": rounds,
            "ideal_requests_per_s": round(concurrency / (latency_ms / 1000), 1), **median,
            "pipeline_vs_bare_all_rounds": [m["pipeline_vs_bare"] for m in measured]}


def llama(requests: int) -> dict:
    import httpx

    from cotaforge.teacher.build import build_teacher
    from cotaforge.teacher.client import ChatClient
    from cotaforge.teacher.serve import LOCAL_MODEL_NAME, llama_cpp_command, local_model_path, start_server
    from tests.teacher.conftest import cot_request

    model = local_model_path(ROOT / "output" / "cache" / "models")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1"
    out_dir = Path(tempfile.mkdtemp(prefix="bench-llama-"))
    server = start_server(llama_cpp_command(model, port=port), url, log_path=out_dir / "server.log", timeout_s=180)
    try:
        # The server alone: one stream, free text, as many tokens as it will write up to max_tokens.
        body = {"model": LOCAL_MODEL_NAME, "max_tokens": 200, "temperature": 0.7, "seed": 1,
                "messages": [{"role": "user", "content": "Describe the sound of rain on a tin roof."}]}
        httpx.post(f"{url}/chat/completions", json={**body, "max_tokens": 8}, timeout=300)  # warm up
        tokens, seconds = 0, 0.0
        for seed in range(3):
            started = time.perf_counter()
            answer = httpx.post(f"{url}/chat/completions", json={**body, "seed": seed}, timeout=300).json()
            seconds += time.perf_counter() - started
            tokens += answer["usage"]["completion_tokens"]
        server_tokens_per_s = tokens / seconds
        cfg = load_config(None, [f"run.out_dir={out_dir}", "teacher.structured_output=json_object",
                                 "teacher.max_tokens=200", "teacher.concurrency_per_endpoint=1",
                                 "teacher.output_attempts=1", "teacher.timeout_s=600"],
                          teacher__backend="openai", teacher__base_urls=[url], teacher__model=LOCAL_MODEL_NAME)
        teacher = build_teacher(cfg, "expand")
        bodies: list[dict] = []
        original = ChatClient.fetch

        async def recording(self, body, prompt_version, task=""):  # keeps the bodies for the bare replay
            bodies.append(body)
            return await original(self, body, prompt_version, task)

        ChatClient.fetch = recording
        started = time.perf_counter()
        results = teacher.write_cots([cot_request(i, "multiple_choice" if i % 2 else "yes_no")
                                      for i in range(requests)])
        pipeline_s = time.perf_counter() - started
        ChatClient.fetch = original
        # The server alone on the very same requests (new seeds, so nothing is reused): one at a time.
        tokens, seconds = 0, 0.0
        for body in bodies:
            started = time.perf_counter()
            answer = httpx.post(f"{url}/chat/completions", json={**body, "seed": body["seed"] + 7}, timeout=600).json()
            seconds += time.perf_counter() - started
            tokens += answer["usage"]["completion_tokens"]
        same_requests_tokens_per_s = tokens / seconds
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(out_dir, ignore_errors=True)
    return {"server_single_stream_tokens_per_s": round(server_tokens_per_s, 1),
            "server_same_requests_tokens_per_s": round(same_requests_tokens_per_s, 1),
            "pipeline_tokens_per_s": round(teacher.usage.completion_tokens / pipeline_s, 1),
            "pipeline_prompt_plus_completion_tokens_per_s": round(
                (teacher.usage.prompt_tokens + teacher.usage.completion_tokens) / pipeline_s, 1),
            "requests": requests, "completion_tokens": teacher.usage.completion_tokens,
            "usable_answers": sum(type(r).__name__ == "CotStages" for r in results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="?", choices=["overhead", "llama", "all", "serve"], default="all")
    parser.add_argument("--port", type=int, default=8011, help="serve: the port of the benchmark's server")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--rounds", type=int, default=3, help="overhead: rounds (pipeline, then bare) to take the median of")
    parser.add_argument("--requests", type=int, default=6, help="llama: chains of thought to write")
    args = parser.parse_args()
    if args.which == "serve":
        serve(args.port, args.latency_ms)
        return
    if args.which in ("overhead", "all"):
        print(json.dumps({"overhead": overhead(args.concurrency, args.latency_ms, args.rounds)}, indent=1), flush=True)
    if args.which in ("llama", "all"):
        print(json.dumps({"llama": llama(args.requests)}, indent=1), flush=True)


if __name__ == "__main__":
    main()
