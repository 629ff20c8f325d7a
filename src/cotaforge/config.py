"""One run's configuration: a YAML file (or command-line flags) loaded into strict pydantic models.

Every section forbids unknown keys, so a typo fails fast instead of silently using a default.
`--set section.key=value` overrides any key; values are parsed as YAML (`--set balance.per_cell=40`).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cotaforge.errors import ConfigError

PROMPT_STYLES_TEMPLATE = ("concise", "conversational")
LLM_PROMPT_STYLE = "llm"  # the teacher writes the question (and wrong options) around the fixed answer


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunSection(_Section):
    name: str | None = Field(default=None, description="run name; default: the manifests' folder names")
    out_dir: Path = Field(default=Path("output"), description="root for runs/ and datasets/")
    seed: int = Field(default=0, ge=0)
    batch_size: int = Field(default=256, ge=1, le=100_000, description="clips per batch (one part file per batch)")
    workers: int = Field(default=2, ge=1, le=256, description="batches processed at once by the flows")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}", value):
            raise ValueError("use letters, digits, '.', '_' or '-' (at most 80 characters), e.g. 'digits-v1'")
        return value


class InputSection(_Section):
    manifests: list[Path] = Field(default_factory=list, description="CSV / JSONL / Parquet files or label folders")
    group_by: str | None = Field(default=None, description="manifest column that groups rows for splitting")


class IngestSection(_Section):
    min_duration_s: float = Field(default=0.1, gt=0, le=3600)
    max_duration_s: float = Field(default=600.0, gt=0, le=86_400)
    silence_peak_dbfs: float = Field(default=-70.0, le=0, description="clips whose peak is below this are silent")
    max_label_chars: int = Field(default=48, ge=1, le=500)
    max_label_words: int = Field(default=5, ge=1, le=50)

    @model_validator(mode="after")
    def _bounds(self) -> "IngestSection":
        if self.min_duration_s >= self.max_duration_s:
            raise ValueError("ingest.min_duration_s must be below ingest.max_duration_s")
        return self


class CaptionSection(_Section):
    mode: Literal["facts", "text_llm", "audio_llm"] = "facts"
    prompt: str = Field(default="caption_facts.v1", description="prompt file stem in prompts/")
    text_prompt: str = Field(default="caption_text.v1", description="prompt of mode text_llm")
    audio_prompt: str = Field(default="caption_audio.v1", description="prompt of mode audio_llm")
    window_s: float = Field(default=30.0, ge=1, le=600,
                            description="audio_llm: longer clips are captioned in windows this long, then merged")


class TeacherSection(_Section):
    backend: Literal["template", "openai", "vllm"] = "template"
    model: str = Field(default="template", description="model name the server knows (vLLM: the served model)")
    base_urls: list[str] = Field(default_factory=list,
                                 description="OpenAI-compatible endpoints, e.g. http://gpu1:8000/v1; requests spread across them")
    api_key_env: str = Field(default="OPENAI_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                             description="environment variable that holds the API key, when the server needs one")
    structured_output: Literal["json_schema", "json_object", "json"] = Field(
        default="json_schema", description="json_schema (vLLM), json_object with a schema (llama.cpp), json (prompt + repair)")
    temperature: float = Field(default=0.7, ge=0, le=2)
    max_tokens: int = Field(default=1024, ge=16, le=32_768)
    concurrency_per_endpoint: int = Field(default=64, ge=1, le=4096, description="requests in flight per endpoint")
    requests_per_min: float | None = Field(default=None, gt=0, description="optional limit over all endpoints")
    tokens_per_min: float | None = Field(default=None, gt=0, description="optional limit (prompt + completion tokens)")
    timeout_s: float = Field(default=300.0, gt=0, le=3600, description="one request, from sending to the whole answer")
    connect_timeout_s: float = Field(default=10.0, gt=0, le=600)
    retries: int = Field(default=6, ge=0, le=100, description="re-sends after 429, 5xx, timeouts, connection errors")
    output_attempts: int = Field(default=3, ge=1, le=20,
                                 description="answers asked for when one is cut off (length) or does not parse or validate")
    backoff_s: float = Field(default=1.0, ge=0, le=600, description="first retry delay; doubles per retry, with jitter")
    backoff_max_s: float = Field(default=60.0, ge=0, le=3600)
    cache: bool = Field(default=True, description="replay answered requests from the response cache")
    cache_dir: Path | None = Field(default=None, description="default <run.out_dir>/cache/teacher, shared across runs")
    usd_per_million_prompt_tokens: float = Field(default=0.0, ge=0)
    usd_per_million_completion_tokens: float = Field(default=0.0, ge=0)
    question_prompt: str = Field(default="question_llm.v1", description="prompt of the llm prompt style's questions")
    cot_prompt: str = Field(default="cot_llm.v1", description="prompt of the chain of thought")
    judge_prompt: str = Field(default="judge.v1", description="prompt of validate's optional judge")
    vllm_engine: dict[str, Any] = Field(default_factory=dict,
                                        description="backend vllm: keyword arguments of vllm.LLM, e.g. tensor_parallel_size")

    @field_validator("base_urls")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
                raise ValueError(f"{url!r} is not an http(s) URL; give the API root, e.g. http://localhost:8000/v1")
        if len(set(value)) != len(value):
            raise ValueError("list each base URL once")
        return [url.rstrip("/") for url in value]

    @model_validator(mode="after")
    def _backend_needs(self) -> "TeacherSection":
        if self.backend != "template" and self.model == "template":
            raise ValueError(f"teacher.backend {self.backend} needs teacher.model (e.g. --model Qwen/Qwen2.5-7B-Instruct)")
        if self.backend == "openai" and not self.base_urls:
            raise ValueError("teacher.backend openai needs at least one teacher.base_urls entry (--base-url URL)")
        if self.backend == "template" and self.base_urls:
            raise ValueError("teacher.base_urls is set but teacher.backend is template; add --teacher openai")
        return self


class ExpandSection(_Section):
    question_types: list[Literal["multiple_choice", "yes_no", "open_ended", "comparison"]] = Field(
        default_factory=lambda: ["multiple_choice", "yes_no", "open_ended", "comparison"]
    )
    prompt_styles: list[str] = Field(default_factory=lambda: list(PROMPT_STYLES_TEMPLATE))
    n_options: int = Field(default=4, ge=2, le=8, description="options per multiple-choice question")
    metadata_fields: list[str] | Literal["auto"] = Field(
        default="auto", description="manifest columns questions may ask about; 'auto' picks categorical ones"
    )
    question_bank: str = Field(default="questions.v1", description="paraphrase bank file stem in prompts/")
    cot_bank: str = Field(default="cot_template.v1", description="CoT sentence bank file stem in prompts/")

    @field_validator("question_types", "prompt_styles")
    @classmethod
    def _non_empty_unique(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("list at least one")
        if len(set(value)) != len(value):
            raise ValueError("entries must be distinct")
        return value


class ValidateSection(_Section):
    min_stage_chars: int = Field(default=8, ge=1, le=10_000)
    max_stage_chars: int = Field(default=4000, ge=16, le=100_000)
    near_duplicate_jaccard: float = Field(default=0.9, gt=0, le=1)
    forbidden_words: list[str] = Field(
        default_factory=lambda: ["label", "labels", "labeled", "labelled", "metadata", "annotation",
                                 "annotations", "annotated", "manifest"]
    )
    judge: bool = Field(default=False, description="ask the teacher whether each sample's reasoning supports its answer")
    judge_min_score: int = Field(default=3, ge=1, le=5, description="judge scores (1-5) below this are rejected")


class BalanceSection(_Section):
    enabled: bool = True
    per_cell: int | Literal["median", "min"] = Field(
        default="median", description="samples per (class, prompt style) cell: a number, or the cells' median or minimum")

    @field_validator("per_cell")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("per_cell must be at least 1, 'median' or 'min'")
        return value


class PublishSection(_Section):
    name: str | None = Field(default=None, description="dataset name; default the run name")
    version: str = Field(default="v1", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")
    splits: dict[str, float] = Field(default_factory=lambda: {"train": 0.8, "validation": 0.1, "test": 0.1})
    shard_rows: int = Field(default=20_000, ge=1, le=10_000_000, description="most rows per Parquet shard")
    license: str = Field(default="other", description="the dataset card's license (the sources' license governs)")
    attribution: str = Field(default="", description="source credits printed in the dataset card")
    push_to_hub: str | None = Field(default=None, description="Hub dataset repo id, e.g. org/name")
    private: bool = True

    @field_validator("splits")
    @classmethod
    def _ratios(cls, value: dict[str, float]) -> dict[str, float]:
        if not value or any(not re.fullmatch(r"[a-z][a-z0-9_]*", k) for k in value):
            raise ValueError("split names are lower-case words, e.g. {train: 0.8, validation: 0.1, test: 0.1}")
        if any(r < 0 for r in value.values()) or abs(sum(value.values()) - 1.0) > 1e-6:
            raise ValueError(f"split ratios must be non-negative and sum to 1, got {value}")
        return value


class ReviewSection(_Section):
    db_url: str | None = Field(
        default=None, description="review database: an SQLAlchemy URL (e.g. postgresql+psycopg://host/db); "
                                  "default <run>/review/review.sqlite")
    double_fraction: float = Field(default=0.1, ge=0, le=1,
                                   description="share of samples annotated twice, by different annotators")
    reject_reasons: list[str] = Field(
        default_factory=lambda: ["wrong_answer", "audio_mismatch", "hallucination", "reasoning_error",
                                 "question_unclear", "leaks_answer", "bad_audio", "other"],
        description="reasons an annotator picks from when rejecting a sample")
    claim_minutes: int = Field(default=30, ge=1, le=24 * 60,
                               description="how long a served sample stays reserved for its annotator")
    session_hours: int = Field(default=12, ge=1, le=24 * 30, description="how long a sign-in lasts")

    @field_validator("reject_reasons")
    @classmethod
    def _reasons(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError("list at least one reason, each once")
        if any(not re.fullmatch(r"[a-z][a-z0-9_]{0,39}", r) for r in value):
            raise ValueError("reject reasons are lower-case codes, e.g. wrong_answer")
        return value


class RunConfig(_Section):
    run: RunSection = Field(default_factory=RunSection)
    inputs: InputSection = Field(default_factory=InputSection)
    ingest: IngestSection = Field(default_factory=IngestSection)
    caption: CaptionSection = Field(default_factory=CaptionSection)
    teacher: TeacherSection = Field(default_factory=TeacherSection)
    expand: ExpandSection = Field(default_factory=ExpandSection)
    validate_: ValidateSection = Field(default_factory=ValidateSection, alias="validate")
    balance: BalanceSection = Field(default_factory=BalanceSection)
    publish: PublishSection = Field(default_factory=PublishSection)
    review: ReviewSection = Field(default_factory=ReviewSection)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _llm_parts_need_llm_teacher(self) -> "RunConfig":
        if self.teacher.backend != "template":
            return self
        needs = [name for name, used in (
            (f"caption.mode={self.caption.mode}", self.caption.mode != "facts"),
            (f"expand.prompt_styles with '{LLM_PROMPT_STYLE}'", LLM_PROMPT_STYLE in self.expand.prompt_styles),
            ("validate.judge", self.validate_.judge)) if used]
        if needs:
            raise ValueError(f"{', '.join(needs)} need an LLM teacher: set teacher.backend openai (or vllm) and "
                             "teacher.model, e.g. --teacher openai --base-url http://localhost:8000/v1 --model NAME")
        return self

    @property
    def teacher_cache_dir(self) -> Path:
        return self.teacher.cache_dir or self.run.out_dir / "cache" / "teacher"

    @property
    def run_name(self) -> str:
        if self.run.name:
            return self.run.name
        stems = [(m if m.is_dir() else m.parent).name or "dataset" for m in self.inputs.manifests]
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(dict.fromkeys(stems)) or "dataset").strip("-.")
        return name[:80] or "dataset"

    @property
    def dataset_name(self) -> str:
        return self.publish.name or self.run_name

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def section_hash(self, *sections: str) -> str:
        """Hash of the named sections: a stage's fingerprint includes only what changes its output."""
        data = self.to_dict()
        return stable_hash({name: data[name] for name in sections})


def stable_hash(value: Any, length: int = 16) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `section.key` in a nested mapping, creating sections as needed."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is not a section")
        node = child
    node[keys[-1]] = value


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """A config file's top-level mapping; ConfigError naming the file when it is missing or malformed."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return loaded or {}


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> None:
    """`--set section.key=value` items (values parsed as YAML) applied to a config mapping."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: use KEY=VALUE, e.g. --set section.key=40")
        key, raw = item.split("=", 1)
        set_dotted(data, key.strip(), yaml.safe_load(raw) if raw else "")


def validation_problems(exc: ValidationError) -> str:
    """A pydantic error as 'section.key: message; ...'."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())


def load_config(path: Path | None = None, overrides: list[str] | None = None, **flags: Any) -> RunConfig:
    """Load a run config from YAML (or defaults), then apply `--set key=value` overrides and CLI flags.

    Raises ConfigError naming the file and key when anything is wrong.
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml_mapping(path)
        # Relative manifest paths in a config file are relative to the file, like in a manifest.
        manifests = data.get("inputs", {}).get("manifests") if isinstance(data.get("inputs"), dict) else None
        if isinstance(manifests, list):
            data["inputs"]["manifests"] = [str((path.parent / m).resolve()) if not Path(str(m)).is_absolute() else m
                                           for m in manifests]
    apply_overrides(data, overrides)
    for dotted, value in flags.items():
        if value is not None and value != []:
            set_dotted(data, dotted.replace("__", "."), value)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid config{where}: {validation_problems(exc)}") from exc
