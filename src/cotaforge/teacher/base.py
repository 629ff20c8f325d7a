"""What a teacher is asked and what it returns; every backend implements `Teacher`.

The question and the correct answer are fixed by cotaforge before a teacher sees them (a teacher that
knows the answer hallucinates less); the teacher writes the five CoT stages that reach it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from cotaforge.config import stable_hash
from cotaforge.errors import ConfigError
from cotaforge.models import TeacherUsage
from cotaforge.prompts import prompt_fingerprint


@dataclass(frozen=True)
class CotRequest:
    """One sample's question with its fixed answer, and the clip facts the CoT must rest on."""

    sample_id: str
    question_type: str
    target: str
    question: str
    options: list[str]
    answer: str  # letter, yes/no, or the short answer
    answer_text: str  # the correct option's text, or the true class, quoted for prose
    caption: str
    facts: dict
    asked_value: str = ""  # the candidate of a yes/no question
    field_name: str = ""  # the metadata field of a metadata question
    grounding: dict = field(default_factory=dict)  # comparison: quantity, reference, more, less, measured
    seed: int = 0
    # Scene questions: the timeline heard (cotaforge.scenes.Event, by onset), the question's form
    # (cotaforge.scene_questions.FORMS) and the sounds it asks about. Empty for a single clip.
    events: tuple = ()
    form: str = ""
    asked: tuple[str, ...] = ()


class CotStages(BaseModel):
    """A teacher's answer; its JSON Schema is the structured-output constraint of LLM backends."""

    model_config = ConfigDict(extra="forbid")

    planning: str = Field(min_length=1)
    caption: str = Field(min_length=1)
    reasoning: str = Field(min_length=1)
    summary: str = Field(min_length=1)
    response: str = Field(min_length=1)


@dataclass(frozen=True)
class CaptionRequest:
    """One clip to caption: its class names as hints, grounding metadata, facts, and its audio for audio_llm."""

    clip_id: str
    labels: list[str]
    metadata: dict[str, str]
    facts: dict
    audio_wav: bytes | None = None  # 16 kHz mono PCM16 WAV; set in mode audio_llm
    seed: int = 0


class CaptionText(BaseModel):
    model_config = ConfigDict(extra="forbid")

    caption: str = Field(min_length=1)


@dataclass(frozen=True)
class QuestionRequest:
    """A question for the teacher to write (prompt style `llm`) around an answer cotaforge has fixed."""

    sample_id: str
    question_type: str
    answer_text: str  # the correct value in plain words: the class, a metadata value, or more/less word
    caption: str
    facts: dict
    asked_value: str = ""  # yes_no: the candidate the question must propose
    field_name: str = ""  # metadata questions: the field asked about
    grounding: dict = field(default_factory=dict)  # comparison: quantity, reference, more, less
    n_wrong_options: int = 0  # multiple_choice: how many wrong options to write
    avoid: tuple[str, ...] = ()  # values no wrong option may equal (the clip's other true classes)
    seed: int = 0
    # Scene questions: the form, the sounds asked about (the question must name them) and the options,
    # fixed by cotaforge (the teacher words only the question). Empty for a single clip.
    form: str = ""
    asked: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


class QuestionDraft(BaseModel):
    """The teacher's question; for multiple choice also the wrong options (cotaforge places the right one)."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1)
    wrong_options: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class JudgeRequest:
    """A validated sample for the judge: does its reasoning support its fixed answer?"""

    sample_id: str
    question: str  # with its options, as the user turn shows them
    answer: str
    caption: str
    reasoning: str
    summary: str
    response: str
    seed: int = 0


class JudgeVerdict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    supports_answer: bool
    score: int = Field(ge=1, le=5, description="1: the reasoning contradicts the answer; 5: it fully supports it")
    explanation: str = Field(min_length=1)


@dataclass(frozen=True)
class TeacherFailure:
    """A request the teacher could not answer well enough; it becomes a reject row with the raw output."""

    sample_id: str
    reason: str
    message: str
    raw: str = ""


class Teacher(ABC):
    backend: str
    model: str

    def __init__(self) -> None:
        self.usage = TeacherUsage()

    @abstractmethod
    def prompt_versions(self) -> list[str]: ...

    def parameters(self) -> dict:
        return {}

    def fingerprint(self) -> str:
        """Changes whenever the teacher would write something different for the same request."""
        return stable_hash([self.backend, self.model, self.prompt_versions(), self.parameters(),
                            prompt_fingerprint(self.prompt_versions())])

    @abstractmethod
    def write_cots(self, requests: list[CotRequest]) -> list[CotStages | TeacherFailure]: ...

    def write_captions(self, requests: list[CaptionRequest]) -> list[CaptionText | TeacherFailure]:
        raise ConfigError(f"the {self.backend} teacher cannot caption; use caption.mode facts or an LLM teacher")

    def write_questions(self, requests: list[QuestionRequest]) -> list[QuestionDraft | TeacherFailure]:
        raise ConfigError(f"the {self.backend} teacher cannot write questions; drop the 'llm' prompt style "
                          "or use an LLM teacher")

    def judge(self, requests: list[JudgeRequest]) -> list[JudgeVerdict | TeacherFailure]:
        raise ConfigError(f"the {self.backend} teacher cannot judge; set validate.judge false or use an LLM teacher")
