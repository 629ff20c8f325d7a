"""Build the configured teacher for one stage."""

from __future__ import annotations

from cotaforge.config import RunConfig
from cotaforge.teacher.base import Teacher


def build_teacher(cfg: RunConfig, stage: str) -> Teacher:
    """`template` (no LLM), `openai` (OpenAI-compatible servers) or `vllm` (in-process, GPU)."""
    backend = cfg.teacher.backend
    if backend == "template":
        from cotaforge.teacher.template import TemplateTeacher

        return TemplateTeacher(cfg.expand.cot_bank)
    from cotaforge.teacher.llm import LLMTeacher

    if backend == "openai":
        from cotaforge.teacher.client import ClientSettings, shared_client
        from cotaforge.teacher.llm import OpenAIEngine

        return LLMTeacher(cfg, stage, OpenAIEngine(shared_client(ClientSettings.from_config(cfg))), backend)
    from cotaforge.teacher.offline import VLLMEngine

    return LLMTeacher(cfg, stage, VLLMEngine.shared(cfg), backend)


def teacher_fingerprint(cfg: RunConfig, stage: str) -> str:
    """`build_teacher(cfg, stage).fingerprint()` without an engine: no server is contacted, no model is loaded.

    The fingerprint depends on the config alone, so the pipeline can tell which parts are current before it
    sends any batch to a worker.
    """
    if cfg.teacher.backend == "template":
        from cotaforge.teacher.template import TemplateTeacher

        return TemplateTeacher(cfg.expand.cot_bank).fingerprint()
    from cotaforge.teacher.llm import LLMTeacher

    return LLMTeacher(cfg, stage, engine=None, backend=cfg.teacher.backend).fingerprint()
