"""`cotaforge teacher serve`: start a teacher server (vLLM on a GPU host, or llama.cpp on the CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cotaforge.console import console, fail
from cotaforge.errors import CotaforgeError

teacher_app = typer.Typer(no_args_is_help=True, help="Teacher LLM servers.")


@teacher_app.command("serve")
def teacher_serve(
        vllm: Annotated[Optional[str], typer.Option("--vllm", help="serve this model with vLLM (GPU host), e.g. Qwen/Qwen2.5-7B-Instruct")] = None,
        local: Annotated[bool, typer.Option("--local", help="serve the small Gemma 3 270M GGUF with llama.cpp on the CPU")] = False,
        host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0 to serve other machines)")] = "127.0.0.1",
        port: Annotated[Optional[int], typer.Option(help="port (default 8000 for vLLM, 8080 for --local)")] = None,
        max_num_seqs: Annotated[Optional[int], typer.Option(help="vLLM: sequences decoded at once (default: vLLM's own, sized to the GPU)")] = None,
        audio_per_prompt: Annotated[int, typer.Option(help="vLLM: audio clips per request (0 for text-only models)")] = 1,
        structured_backend: Annotated[str, typer.Option(help="vLLM: structured-output backend")] = "xgrammar",
        extra: Annotated[Optional[list[str]], typer.Option("--extra", help="one more `vllm serve` argument; repeatable")] = None,
        model_dir: Annotated[Path, typer.Option(help="--local: where the GGUF is assembled")] = Path("output/cache/models"),
        ready_timeout_s: Annotated[float, typer.Option(help="how long to wait for the server to answer")] = 1800.0) -> None:
    """Start a teacher server, wait until it answers, print how to point a run at it, and keep it running."""
    from cotaforge.teacher import serve

    if bool(vllm) == local:
        fail(CotaforgeError("give exactly one of --vllm MODEL or --local"))
    try:
        if vllm:
            port = port or 8000
            command = serve.vllm_command(vllm, host, port, max_num_seqs, audio_per_prompt, structured_backend, extra)
            model, mode = vllm, "json_schema"
        else:
            port = port or 8080
            command = serve.llama_cpp_command(serve.local_model_path(model_dir), host, port)
            model, mode = serve.LOCAL_MODEL_NAME, "json_object"  # what the config picks for this model name too
        url = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}/v1"
        console.print(f"starting: {' '.join(command)}")
        process = serve.start_server(command, url, timeout_s=ready_timeout_s)
    except CotaforgeError as exc:
        fail(exc)
    extra_sets = f"--set teacher.structured_output={mode}" + (" --set teacher.system_role=false" if local else "")
    console.print(f"[bold green]teacher ready[/] at {url}\n  cotaforge run CONFIG.yaml --teacher openai --base-url {url} "
                  f"--model {model} {extra_sets}")
    try:
        process.wait()
    except KeyboardInterrupt:
        process.terminate()
        process.wait(timeout=60)
