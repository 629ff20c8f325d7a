"""One run's configuration: a YAML file (or command-line flags) loaded into strict pydantic models.

Every section forbids unknown keys, so a typo fails fast instead of silently using a default.
`--set section.key=value` overrides any key; values are parsed as YAML (`--set balance.per_cell=40`).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (AliasChoices, BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator,
                      model_validator)

from cotaforge.errors import ConfigError
from cotaforge.location import LocationPath, is_remote, url_protocol
from cotaforge.models import QUESTION_TYPES, QuestionType
from cotaforge.scenes import MIN_GAP_S, MIN_LEVEL_DIFF_DB

PROMPT_STYLES_TEMPLATE = ("concise", "conversational")
LLM_PROMPT_STYLE = "llm"  # the teacher writes the question (and wrong options) around the fixed answer


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunSection(_Section):
    name: str | None = Field(default=None, description="run name; default: the manifests' folder names")
    out_dir: LocationPath = Field(default=Path("output"), description="root for runs/ and datasets/: a folder "
                                                                        "or a URL such as s3://bucket/prefix")
    seed: int = Field(default=0, ge=0)
    batch_size: int = Field(default=256, ge=1, le=100_000, description="clips per batch (one part file per batch)")
    workers: int = Field(default=2, ge=1, le=256, description="batches processed at once by the flows")
    executor: Literal["threads", "dask"] = Field(
        default="threads", description="threads: a thread pool in this process; dask: Dask worker processes "
                                       "(a local cluster of run.workers processes, or the one at run.dask_address)")
    dask_address: str | None = Field(default=None, description="scheduler of an existing Dask cluster, "
                                                               "e.g. tcp://10.0.0.5:8786 (run.executor=dask)")
    batches_per_task: int | None = Field(
        default=None, ge=1, le=100_000, description="batches one task of a stage carries (each still writes its own "
                                                    "part); default: about 8 tasks per worker and stage")
    dask_worker_wait_s: float = Field(
        default=60.0, gt=0, le=86_400, description="how long a stage waits for a Dask worker when the cluster has "
                                                   "none (not started yet, or all died) before stopping the run")

    @field_validator("dask_address")
    @classmethod
    def _scheduler_address(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"(tcp|tls|ws|wss|ucx)://[^\s/:]+:\d{1,5}/?", value):
            raise ValueError(f"{value!r} is not a Dask scheduler address; write it as tcp://HOST:PORT, "
                             "e.g. tcp://10.0.0.5:8786 (what `dask scheduler` prints)")
        return value

    @model_validator(mode="after")
    def _address_needs_dask(self) -> "RunSection":
        if self.dask_address is not None and self.executor != "dask":
            raise ValueError("run.dask_address is used only by the dask executor; set run.executor=dask "
                             "(--executor dask) or drop the address")
        return self

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}", value):
            raise ValueError("use letters, digits, '.', '_' or '-' (at most 80 characters), e.g. 'digits-v1'")
        return value


class ColumnMapping(_Section):
    """How a manifest's columns map onto clips; unset keys come from the preset, else the plain layout."""

    preset: str | None = Field(default=None, description="corpus layout: esc50, urbansound8k, fsd50k, audioset, "
                                                         "audiofolder, strong-tsv; default: detected from the header")
    path_column: str | None = Field(default=None, description="column with the audio path (default 'path')")
    path_template: str | None = Field(default=None, description="path built from columns, e.g. 'audio/fold{fold}/{name}'")
    label_column: str | None = Field(default=None, description="column with the label(s) (default 'label')")
    label_sep: str | None = Field(default=None, min_length=1, max_length=3,
                                  description="separator of several labels in one cell (default ';')")
    label_names: LocationPath | None = Field(default=None, description="CSV table from label id to display name")
    group_by: str | None = Field(default=None, validation_alias=AliasChoices("group_by", "group_column"),
                                 description="column that groups rows for splitting (alias group_column)")
    id_column: str | None = Field(default=None, description="column with the clip's own id (default 'id')")
    audio_root: LocationPath | None = Field(default=None, description="folder relative audio paths start from "
                                                              "(default: the manifest's folder, or the preset's)")

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        from cotaforge.corpora import PRESET_NAMES

        if value is not None and value not in PRESET_NAMES:
            raise ValueError(f"unknown preset {value!r}; choose one of {', '.join(PRESET_NAMES)}")
        return value


class ManifestEntry(ColumnMapping):
    """One input with its own column mapping: a manifest file or folder, or a Hugging Face dataset."""

    path: LocationPath | None = Field(default=None, description="CSV / TSV / JSONL / Parquet file or folder "
                                                                 "(a path or a URL)")
    hf_dataset: str | None = Field(default=None, description="save_to_disk or Parquet folder, or a Hub dataset name")
    hf_split: str | None = Field(default=None, description="split of a Hugging Face dataset (default: every split)")

    @model_validator(mode="after")
    def _one_source(self) -> "ManifestEntry":
        if (self.path is None) == (self.hf_dataset is None):
            raise ValueError("give each inputs.manifests entry exactly one of 'path' or 'hf_dataset'")
        return self

    @property
    def label(self) -> str:
        return str(self.path) if self.path is not None else f"hf:{self.hf_dataset}"


def _manifest_kind(value: Any) -> str:
    return "entry" if isinstance(value, (dict, ManifestEntry)) else "path"


# A plain path, or a mapping with its own keys; told apart up front so an error names only the one meant.
ManifestItem = Annotated[Union[Annotated[LocationPath, Tag("path")], Annotated[ManifestEntry, Tag("entry")]],
                         Discriminator(_manifest_kind)]


class InputSection(ColumnMapping):
    """The run's inputs. The mapping keys here apply to every manifest that does not set its own."""

    manifests: list[ManifestItem] = Field(
        default_factory=list, description="CSV / TSV / JSONL / Parquet files or folders, or objects with 'path' "
                                          "(or 'hf_dataset') and their own mapping keys")

    def entries(self) -> list[ManifestEntry]:
        """Every input as an entry, the run-wide mapping filling the keys an entry leaves unset."""
        shared = {k: v for k, v in self.model_dump(exclude={"manifests"}).items() if v is not None}
        entries = []
        for item in self.manifests:
            own = ({"path": item} if not isinstance(item, ManifestEntry)
                   else {k: v for k, v in item.model_dump().items() if v is not None})
            entries.append(ManifestEntry.model_validate({**shared, **own}))
        return entries


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


SCENE_KINDS = ("sequence", "repeat", "mixture")  # the scene kinds compose builds (its parts hold them)


class ComposeSection(_Section):
    """Scenes built from the run's labeled clips: sequences, repeats and mixtures with exact timelines."""

    enabled: bool | Literal["auto"] = Field(default="auto", description="build scenes; 'auto': when the run has >= 3 classes")
    scenes: int = Field(default=200, ge=0, le=1_000_000, description="scenes to build (twins come on top)")
    kinds: dict[Literal["sequence", "repeat", "mixture"], float] = Field(
        default_factory=lambda: {"sequence": 0.4, "repeat": 0.3, "mixture": 0.3},
        description="relative weight of each scene kind; a kind with weight 0 is not built")
    max_events: int = Field(default=4, ge=2, le=8, description="most events in one scene")
    gap_s: tuple[float, float] = Field(default=(0.3, 1.0), description="silence between events of a sequence or repeat")
    level_dbfs: tuple[float, float] = Field(default=(-36.0, -12.0), description="RMS level of each event in the scene")
    crossfade_share: float = Field(default=0.0, ge=0, le=1,
                                   description="share of sequence joins that overlap by crossfade_s instead of a gap")
    crossfade_s: float = Field(default=0.1, ge=0.01, le=1.0)
    background_share: float = Field(default=0.5, ge=0, le=1, description="share of mixtures laid over a background clip")
    max_duration_s: float = Field(default=30.0, ge=2, le=600, description="longest scene (30 s: Qwen2-Audio's window)")
    twin_fraction: float = Field(default=0.2, ge=0, le=1, description="share of scenes that get a counterfactual twin")
    min_target_snr_db: float = Field(default=6.0, ge=0, le=40,
                                     description="level of a mixture's target event above what sounds with it")

    @field_validator("kinds")
    @classmethod
    def _weights(cls, value: dict[str, float]) -> dict[str, float]:
        if any(w < 0 for w in value.values()) or sum(value.values()) <= 0:
            raise ValueError("kind weights are >= 0 with at least one positive, e.g. {sequence: 1, repeat: 1, mixture: 1}")
        return value

    @model_validator(mode="after")
    def _ranges(self) -> "ComposeSection":
        low_s, high_s = self.gap_s
        if not MIN_GAP_S <= low_s <= high_s <= 10:
            raise ValueError(f"compose.gap_s {list(self.gap_s)}: give [min, max] with {MIN_GAP_S} <= min <= max <= 10 "
                             f"(seconds); shorter gaps make counts and order uncertain")
        low_db, high_db = self.level_dbfs
        if not -60 <= low_db <= high_db - 2 * MIN_LEVEL_DIFF_DB or high_db > -3:
            raise ValueError(f"compose.level_dbfs {list(self.level_dbfs)}: give [min, max] with -60 <= min, max <= -3 "
                             f"and at least {2 * MIN_LEVEL_DIFF_DB:g} dB between them, room for the loudness margins")
        return self


AUDIO_LLM_MAX_WINDOW_S = 30.0  # Qwen2-Audio's and the Omni models' feature extractor cuts audio at 30 s


class CaptionSection(_Section):
    mode: Literal["facts", "text_llm", "audio_llm"] = "facts"
    prompt: str = Field(default="caption_facts.v1", description="prompt file stem in prompts/")
    text_prompt: str = Field(default="caption_text.v1", description="prompt of mode text_llm")
    audio_prompt: str = Field(default="caption_audio.v1", description="prompt of mode audio_llm")
    window_s: float = Field(default=30.0, ge=1, le=600,
                            description="audio_llm: longer clips are captioned in windows this long (at most 30 s), "
                                        "then merged")

    @model_validator(mode="after")
    def _audio_window_fits_the_model(self) -> "CaptionSection":
        if self.mode == "audio_llm" and self.window_s > AUDIO_LLM_MAX_WINDOW_S:
            raise ValueError(f"caption.window_s is {self.window_s:g}, but audio models (Qwen2-Audio, Qwen2.5-Omni) "
                             f"hear only the first {AUDIO_LLM_MAX_WINDOW_S:g} s of a clip and drop the rest silently; "
                             f"set caption.window_s to {AUDIO_LLM_MAX_WINDOW_S:g} or less for caption.mode audio_llm")
        return self


LOCAL_TEACHER_MODEL = "gemma-3-270m"  # the model name `cotaforge teacher serve --local` serves


class TeacherSection(_Section):
    backend: Literal["template", "openai", "vllm"] = "template"
    model: str = Field(default="template", description="model name the server knows (vLLM: the served model)")
    base_urls: list[str] = Field(default_factory=list,
                                 description="OpenAI-compatible endpoints, e.g. http://gpu1:8000/v1; requests spread across them")
    api_key_env: str = Field(default="OPENAI_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                             description="environment variable that holds the API key, when the server needs one")
    structured_output: Literal["json_schema", "json_object", "json"] = Field(
        default="json_schema", description="json_schema (vLLM, llama.cpp's llama-server), json_object with a schema "
                                           "(llama-cpp-python's server; the default for the model `teacher serve "
                                           "--local` serves), json (prompt + repair)")
    system_role: bool | Literal["auto"] = Field(
        default="auto", description="send the instructions as a system message (true), or fold them into the first "
                                    "user turn for chat formats without a system role (false); auto: false for "
                                    "Gemma-family model names")
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
    cache_dir: Path | None = Field(default=None, description="default <run.out_dir>/cache/teacher, shared across runs "
                                                           "(~/.cache/cotaforge/teacher when run.out_dir is a URL)")
    usd_per_million_prompt_tokens: float = Field(default=0.0, ge=0)
    usd_per_million_completion_tokens: float = Field(default=0.0, ge=0)
    question_prompt: str = Field(default="question_llm.v2", description="prompt of the llm prompt style's questions "
                                                                      "(v2 adds scene questions; v1 single clips only)")
    cot_prompt: str = Field(default="cot_llm.v2", description="prompt of the chain of thought (v2 adds the timeline "
                                                             "of a scene; v1 single clips only)")
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
    def _local_model_wants_json_object(self) -> "TeacherSection":
        # llama-cpp-python's server (what `teacher serve --local` starts) answers json_schema with HTTP 500.
        if self.model == LOCAL_TEACHER_MODEL and "structured_output" not in self.model_fields_set:
            self.__dict__["structured_output"] = "json_object"
        return self

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
    question_types: list[QuestionType] = Field(
        default_factory=lambda: list(QUESTION_TYPES),
        description="single clips get multiple_choice, yes_no, open_ended, comparison; clips with a timeline of "
                    "events (scenes, recordings) get count, order, duration, loudness, presence, timing")
    prompt_styles: list[str] = Field(default_factory=lambda: list(PROMPT_STYLES_TEMPLATE))
    n_options: int = Field(default=4, ge=2, le=8, description="options per multiple-choice question")
    metadata_fields: list[str] | Literal["auto"] = Field(
        default="auto", description="manifest columns questions may ask about; 'auto' picks categorical ones"
    )
    question_bank: str = Field(default="questions.v2", description="paraphrase bank file stem in prompts/ "
                                                                   "(v2 adds scene questions; v1 single clips only)")
    cot_bank: str = Field(default="cot_template.v2", description="CoT sentence bank file stem in prompts/ "
                                                                 "(v2 adds scenes; v1 single clips only)")

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
    group_splits: dict[str, str] = Field(
        default_factory=dict, description="pin split groups to splits, by the manifest's group value, e.g. ESC-50's "
                                          "folds with --group-column fold: {'1': train, ..., '4': validation, '5': test}")

    @model_validator(mode="after")
    def _pinned_splits_exist(self) -> "PublishSection":
        unknown = sorted({s for s in self.group_splits.values() if s not in self.splits})
        if unknown:
            raise ValueError(f"publish.group_splits names splits {unknown} that publish.splits does not have "
                             f"({sorted(self.splits)})")
        return self

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
    compose: ComposeSection = Field(default_factory=ComposeSection)
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
        if self.teacher.cache_dir:
            return self.teacher.cache_dir
        if is_remote(self.run.out_dir):  # the cache is an SQLite file: with --out in a bucket it stays local
            return Path.home() / ".cache" / "cotaforge" / "teacher"
        return self.run.out_dir / "cache" / "teacher"

    @property
    def run_name(self) -> str:
        if self.run.name:
            return self.run.name
        stems = [entry.preset or (entry.hf_dataset.rstrip("/").rsplit("/", 1)[-1] if entry.hf_dataset else
                                  _manifest_folder(entry.path).name) or "dataset"
                 for entry in self.inputs.entries()]
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


def _manifest_folder(path: Path) -> Path:
    """The folder a manifest names the run after: itself if a folder, else its parent. A URL is not asked
    (a request per call): one with a file suffix is a file."""
    if is_remote(path):
        return path.parent if path.suffix else path
    return path if path.is_dir() else path.parent


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


def _relative_to(folder: Path, item: Any) -> Any:
    """A manifest entry (a path, or a mapping with path-valued keys) with relative paths made absolute."""
    if isinstance(item, dict):
        local = [k for k in ("path", "audio_root", "label_names") if isinstance(item.get(k), str)]
        if item.get("hf_dataset") and (folder / item["hf_dataset"]).exists():
            local.append("hf_dataset")
        return {**item, **{k: str(_relative_to(folder, item[k])) for k in local}}
    if isinstance(item, str) and url_protocol(item) is None and not Path(item).is_absolute():
        return (folder / item).resolve()
    return item


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
            data["inputs"]["manifests"] = [_relative_to(path.parent, m) for m in manifests]
        inputs = data.get("inputs")
        if isinstance(inputs, dict):
            for key in ("audio_root", "label_names"):
                if isinstance(inputs.get(key), str):
                    inputs[key] = str(_relative_to(path.parent, inputs[key]))
    apply_overrides(data, overrides)
    for dotted, value in flags.items():
        if value is not None and value != []:
            set_dotted(data, dotted.replace("__", "."), value)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid config{where}: {validation_problems(exc)}") from exc
