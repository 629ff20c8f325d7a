"""`cotaforge teacher serve`'s command lines, and the settings a run against each server needs."""

from __future__ import annotations

import json
import tomllib

import pytest

from cotaforge.config import load_config
from cotaforge.errors import ConfigError
from cotaforge.teacher.serve import LOCAL_MODEL_NAME, llama_cpp_command, vllm_command
from tests.conftest import ROOT


def test_vllm_serve_leaves_vllm_its_own_defaults():
    command = vllm_command("Qwen/Qwen2.5-7B-Instruct", port=8001)
    assert command[:3] == ["vllm", "serve", "Qwen/Qwen2.5-7B-Instruct"]
    assert command[command.index("--structured-outputs-config.backend") + 1] == "xgrammar"
    assert json.loads(command[command.index("--limit-mm-per-prompt") + 1]) == {"audio": 1}
    # vLLM sizes max_num_seqs to the GPU, enables prefix caching by default, and applies the model's
    # recommended sampling (generation_config.json) under the request's temperature and max_tokens.
    for flag in ("--max-num-seqs", "--enable-prefix-caching", "--generation-config"):
        assert flag not in command
    asked = vllm_command("m", max_num_seqs=512, audio_per_prompt=0, extra=["--tensor-parallel-size=4"])
    assert asked[asked.index("--max-num-seqs") + 1] == "512" and "--limit-mm-per-prompt" not in asked
    assert asked[-1] == "--tensor-parallel-size=4"


def test_the_local_server_serves_gemma_under_the_name_the_config_knows(tmp_path):
    command = llama_cpp_command(tmp_path / "model.gguf", port=8080)
    assert command[command.index("--chat_format") + 1] == "gemma"
    assert command[command.index("--model_alias") + 1] == LOCAL_MODEL_NAME


def _teacher(*overrides: str, model: str = LOCAL_MODEL_NAME):
    return load_config(None, list(overrides), teacher__backend="openai", teacher__base_urls=["http://127.0.0.1:8080/v1"],
                       teacher__model=model).teacher


def test_the_local_model_implies_json_object_unless_set():
    assert _teacher().structured_output == "json_object"  # llama-cpp-python's server refuses json_schema
    assert _teacher("teacher.structured_output=json").structured_output == "json"
    assert _teacher("teacher.structured_output=json_schema").structured_output == "json_schema"
    assert _teacher(model="Qwen/Qwen2.5-7B-Instruct").structured_output == "json_schema"
    # The resolved config, saved with the run and loaded again, says the same.
    saved = load_config(None, [], teacher__backend="openai", teacher__base_urls=["http://127.0.0.1:8080/v1"],
                        teacher__model=LOCAL_MODEL_NAME).to_dict()
    assert saved["teacher"]["structured_output"] == "json_object"


def test_audio_caption_windows_are_capped_at_30_seconds():
    flags = {"teacher__backend": "openai", "teacher__base_urls": ["http://a:1/v1"], "teacher__model": "m"}
    with pytest.raises(ConfigError, match=r"caption.window_s is 45.*first 30 s.*30 or less"):
        load_config(None, ["caption.mode=audio_llm", "caption.window_s=45"], **flags)
    assert load_config(None, ["caption.mode=audio_llm", "caption.window_s=20"], **flags).caption.window_s == 20
    assert load_config(None, ["caption.window_s=120"]).caption.window_s == 120  # not an audio model's input


def test_the_vllm_extras_name_a_vllm_with_structured_outputs():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["vllm"] == ["vllm>=0.12"]  # StructuredOutputsParams (0.10.2); guided_* fields gone (0.12)
    assert extras["vllm-audio"] == ["vllm[audio]>=0.12"]  # audio decoding on the server, for audio_llm
