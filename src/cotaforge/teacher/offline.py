"""The `vllm` backend: in-process batched generation with `vllm.LLM.chat`, for GPU machines.

Install with `pip install 'cotaforge[vllm]'` (vLLM pins its own CUDA build of torch). Each round of a
batch's requests is one `LLM.chat` call, so vLLM schedules them together; structured output goes through
`SamplingParams.structured_outputs` with the same JSON Schema the `openai` backend sends. Answers are read
from and written to the same response cache as the `openai` backend (one entry per attempt).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from cotaforge.config import RunConfig
from cotaforge.errors import ConfigError
from cotaforge.teacher.cache import CachedAnswer, ResponseCache, request_key
from cotaforge.teacher.client import ChatAnswer, prepared_body, sends_system_role
from cotaforge.teacher.llm import Job


def sampling_params(body: dict[str, Any]) -> Any:
    """vLLM SamplingParams equivalent to an OpenAI request body."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    fmt = body.get("response_format") or {}
    schema = fmt.get("json_schema", {}).get("schema") if fmt.get("type") == "json_schema" else fmt.get("schema")
    return SamplingParams(temperature=body["temperature"], max_tokens=body["max_tokens"], seed=body["seed"],
                          structured_outputs=StructuredOutputsParams(json=schema) if schema else None)


class VLLMEngine:
    """Answers jobs in rounds: every pending job's next request, in one `LLM.chat` call per round."""

    _shared: dict[tuple, "VLLMEngine"] = {}
    _lock = threading.Lock()

    def __init__(self, cfg: RunConfig) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise ConfigError("teacher.backend vllm needs vLLM on a GPU machine: pip install 'cotaforge[vllm]'; "
                              "or serve the model with `cotaforge teacher serve --vllm MODEL` and use "
                              "--teacher openai") from exc
        self.llm = vllm.LLM(model=cfg.teacher.model, **cfg.teacher.vllm_engine)
        self.cache = ResponseCache(cfg.teacher_cache_dir / "responses.sqlite") if cfg.teacher.cache else None
        self.system_role = sends_system_role(cfg.teacher.model, cfg.teacher.system_role)
        self._generate_lock = threading.Lock()  # one LLM, many flow threads: one round at a time

    @classmethod
    def shared(cls, cfg: RunConfig) -> "VLLMEngine":
        """One engine per process and model (loading the weights once)."""
        key = (cfg.teacher.model, repr(sorted(cfg.teacher.vllm_engine.items())), str(cfg.teacher_cache_dir),
               cfg.teacher.system_role)
        with cls._lock:
            if key not in cls._shared:
                cls._shared[key] = cls(cfg)
            return cls._shared[key]

    def solve(self, jobs: list[Job], on_answer: Callable[[Job, ChatAnswer], None]) -> None:
        pending = list(jobs)
        while pending:
            answers = self.answer([job.body() for job in pending], [job.call for job in pending])
            for job, answer in zip(pending, answers):
                on_answer(job, answer)
                job.take(answer)
            pending = [job for job in pending if not job.done]

    def answer(self, bodies: list[dict[str, Any]], calls: list[Any]) -> list[ChatAnswer]:
        bodies = [prepared_body(body, self.system_role) for body in bodies]
        keys = [request_key(body, call.prompt_version) for body, call in zip(bodies, calls)]
        found: dict[int, ChatAnswer] = {}
        if self.cache is not None:
            for i, key in enumerate(keys):
                hit = self.cache.get(key)
                if hit is not None:
                    found[i] = ChatAnswer(hit.content, hit.finish_reason, hit.prompt_tokens, hit.completion_tokens,
                                          cached=True, sends=0)
        missing = [i for i in range(len(bodies)) if i not in found]
        if missing:
            with self._generate_lock:
                outputs = self.llm.chat([bodies[i]["messages"] for i in missing],
                                        sampling_params=[sampling_params(bodies[i]) for i in missing], use_tqdm=False)
            for i, output in zip(missing, outputs):
                first = output.outputs[0]
                answer = CachedAnswer(first.text, first.finish_reason or "stop", len(output.prompt_token_ids or []),
                                      len(first.token_ids))
                if self.cache is not None:
                    self.cache.put(keys[i], answer, calls[i].task)
                found[i] = ChatAnswer(answer.content, answer.finish_reason, answer.prompt_tokens,
                                      answer.completion_tokens, cached=False, sends=1)
        return [found[i] for i in range(len(bodies))]
