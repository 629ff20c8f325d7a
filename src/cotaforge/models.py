"""The records cotaforge reads and writes: the single source of truth for every row.

`schemas/*.json` is generated from these models (`cotaforge schemas export`) and a test fails when the
committed files drift from them. Parquet parts and published shards hold these records; free-form
mappings (metadata, validation details, review) travel as JSON strings so every shard has one fixed
Arrow schema whatever columns a user's manifest carries.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = "1.1"  # 1.1: scene_kind, events and twin_of added to samples; clips carry timelines
SAMPLE_RATE_HZ = 16_000
COT_STAGES = ("planning", "caption", "reasoning", "summary", "response")
SINGLE_CLIP_QUESTION_TYPES = ("multiple_choice", "yes_no", "open_ended", "comparison")
# Questions about a timeline of several sounds (cotaforge.scene_questions), asked of scenes and recordings.
SCENE_QUESTION_TYPES = ("count", "order", "duration", "loudness", "presence", "timing")
QUESTION_TYPES = SINGLE_CLIP_QUESTION_TYPES + SCENE_QUESTION_TYPES
QuestionType = Literal["multiple_choice", "yes_no", "open_ended", "comparison", "count", "order", "duration",
                       "loudness", "presence", "timing"]

# The system turn every published sample carries; the fine-tuning stage trains with it.
SYSTEM_PROMPT = (
    "You are an audio reasoning assistant. Listen to the audio, then think step by step inside "
    "<THINK> with <PLANNING>, <CAPTION>, <REASONING> and <SUMMARY>, and give the final answer inside "
    "<RESPONSE>. For a multiple-choice question, end the response with the letter of the chosen option."
)


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AcousticFacts(_Record):
    """Measured from the decoded 16 kHz mono signal; grounds captions and fact questions."""

    duration_s: float = Field(ge=0)
    loudness_dbfs: float = Field(description="RMS level of the whole clip, dB relative to full scale")
    peak_dbfs: float
    clipping_ratio: float = Field(ge=0, le=1, description="share of samples at or above 0.999 full scale")
    silence_ratio: float = Field(ge=0, le=1, description="share of 25 ms frames below -60 dBFS")
    spectral_centroid_hz: float = Field(ge=0)
    onset_count: int = Field(ge=0)
    tempo_bpm: float | None = Field(default=None, description="None when the clip is too short or has too few onsets")
    f0_median_hz: float | None = Field(default=None, description="median pitch of voiced frames; None if unvoiced")
    voiced_ratio: float = Field(ge=0, le=1)


class Clip(_Record):
    """One ingested clip: a manifest row that decoded, with its provenance and facts."""

    clip_id: str = Field(description="sha256 (first 16 hex) of the 16 kHz int16 PCM: the content hash")
    group_id: str = Field(description="split group: the manifest's group column, or the clip itself")
    source_dataset: str
    source_path: str
    source_id: str
    manifest_row: str = Field(description="MANIFEST:LINE, for error messages and provenance")
    labels: list[str] = Field(min_length=1)
    class_label: str
    metadata: dict[str, str] = Field(default_factory=dict)
    original_sample_rate_hz: int
    original_channels: int
    sample_rate_hz: int = SAMPLE_RATE_HZ
    facts: AcousticFacts
    scene_kind: str = Field(default="", description="'' for a single labeled clip; 'sequence', 'repeat' or "
                                                     "'mixture' for a composed scene; 'recording' for a real "
                                                     "recording with timestamped events")
    events: str = Field(default="[]", description="JSON list of the timeline's events sorted by onset_s: "
                                                  "class_label, source_path, source_id, clip_id, onset_s, "
                                                  "offset_s, gain_db, level_dbfs")
    twin_of_clip: str = Field(default="", description="clip_id of the scene this one is a counterfactual twin of")
    twin_change: str = Field(default="", description="JSON of the twin's one change: swap, remove or repeat")


class Caption(_Record):
    clip_id: str
    mode: Literal["facts", "text_llm", "audio_llm"]
    text: str = Field(min_length=1)
    prompt_version: str


class TeacherInfo(_Record):
    backend: str
    model: str
    prompt_versions: list[str]
    parameters: str = Field(default="{}", description="JSON object of generation parameters")


class Sample(_Record):
    """One chain-of-thought question-answer sample: a published row, less the audio bytes."""

    sample_id: str
    clip_id: str
    group_id: str
    source_dataset: str
    source_path: str
    source_id: str
    duration_s: float
    sample_rate_hz: int = SAMPLE_RATE_HZ
    labels: list[str]
    class_label: str
    metadata: str = Field(default="{}", description="JSON object of the manifest's other columns")
    question_type: QuestionType
    prompt_style: str
    target: str = Field(description="what the question asks about: 'class', 'metadata.<field>', 'fact.<name>', "
                                    "or for a scene 'scene.<count|first|last|after|before|longest|shortest|"
                                    "louder|loudest|present|onset>'")
    target_value: str = Field(description="the ground truth the answer was fixed from (scenes: a class name, "
                                          "an integer as digits, yes/no, or seconds such as '1.2')")
    asked_value: str = Field(default="", description="the value a yes/no or comparison question proposes; for a "
                                                     "scene question a JSON list of the classes it asks about")
    question: str
    options: list[str] = Field(default_factory=list, description="option texts, lettered A, B, C... in order")
    answer: str = Field(description="letter for multiple_choice, yes/no for yes_no, the short answer otherwise")
    planning: str
    caption: str
    reasoning: str
    summary: str
    response: str
    assistant_text: str
    teacher: TeacherInfo
    validation: str = Field(default="{}", description="JSON: checks run and non-fatal flags")
    review: str = Field(default="", description="JSON of the annotators' decision, empty when not reviewed")
    split: str = ""
    schema_version: str = SCHEMA_VERSION
    scene_kind: Literal["", "sequence", "repeat", "mixture", "recording"] = Field(
        default="", description="'' for a single clip, else the kind of scene (or 'recording') the clip is")
    events: str = Field(default="[]", description="JSON list of the clip's timeline (see Clip.events); '[]' for "
                                                  "a single clip")
    twin_of: str = Field(default="", description="sample_id of the counterfactual twin's sample asked the same "
                                                 "question (its answer differs); '' when none")


class Rejection(_Record):
    """A row a stage dropped, and why. Nothing disappears silently."""

    stage: str
    reason: str = Field(description="a reason code, e.g. file_missing, answer_mismatch")
    reasons: list[str] = Field(default_factory=list, description="every failed check, the first is `reason`")
    message: str
    manifest_row: str = ""
    source_path: str = ""
    clip_id: str = ""
    sample_id: str = ""
    raw: str = Field(default="", description="the raw output that failed, when there was one")


class TeacherUsage(_Record):
    """What a stage asked of its teacher. Tokens and cost count only answers paid for (cache misses)."""

    requests: int = Field(default=0, description="requests sent to a server, retries included")
    cache_hits: int = Field(default=0, description="answers replayed from the response cache")
    cache_misses: int = Field(default=0, description="answers a server returned (then cached)")
    retries: int = Field(default=0, description="re-sends after errors, and re-asks after unusable answers")
    failures: int = Field(default=0, description="requests that ended as reject rows")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = Field(default=0.0, description="from teacher.usd_per_million_*_tokens; 0 when not set")


class StageReport(_Record):
    stage: str
    rows_in: int = 0
    rows_out: int = 0
    rejected: dict[str, int] = Field(default_factory=dict, description="rejected rows by reason code")
    parts_done: int = 0
    parts_skipped: int = 0
    seconds: float = 0.0
    teacher: TeacherUsage = Field(default_factory=TeacherUsage,
                                  description="what this run asked of the teacher (skipped parts add nothing)")
    parts_teacher: TeacherUsage = Field(default_factory=TeacherUsage,
                                        description="what the stage's current parts cost the teacher when they were "
                                                    "made: this run's parts and the skipped ones")
    notes: list[str] = Field(default_factory=list)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


class ShardInfo(_Record):
    path: str
    split: str
    rows: int
    bytes: int
    sha256: str


class ShardManifest(_Record):
    name: str
    version: str
    schema_version: str = SCHEMA_VERSION
    fingerprint: str
    created_at: str
    rows: dict[str, int] = Field(description="rows per split")
    shards: list[ShardInfo]


EXPORTED_MODELS: dict[str, type[BaseModel]] = {
    "clip": Clip,
    "caption": Caption,
    "sample": Sample,
    "rejection": Rejection,
    "stage_report": StageReport,
    "shard_manifest": ShardManifest,
}


def count_reasons(rejects: list[Rejection]) -> dict[str, int]:
    """Rejected rows by reason code, as a StageReport holds them."""
    counts: dict[str, int] = {}
    for reject in rejects:
        counts[reject.reason] = counts.get(reject.reason, 0) + 1
    return counts


def merge_reports(stage: str, reports: list[StageReport]) -> StageReport:
    """Sum per-batch reports of one stage into one."""
    total = StageReport(stage=stage)
    for report in reports:
        total.rows_in += report.rows_in
        total.rows_out += report.rows_out
        total.parts_done += report.parts_done
        total.parts_skipped += report.parts_skipped
        total.seconds += report.seconds
        for reason, count in report.rejected.items():
            total.rejected[reason] = total.rejected.get(reason, 0) + count
        for key in TeacherUsage.model_fields:
            setattr(total.teacher, key, getattr(total.teacher, key) + getattr(report.teacher, key))
            setattr(total.parts_teacher, key, getattr(total.parts_teacher, key) + getattr(report.parts_teacher, key))
        total.notes.extend(report.notes)
    return total
