"""What a teacher is asked and what it returns; every backend implements `Teacher`.

The question and the correct answer are fixed by cotaforge before a teacher sees them (a teacher that
knows the answer hallucinates less); the teacher writes the five CoT stages that reach it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from cotaforge.config import stable_hash
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


class CotStages(BaseModel):
    """A teacher's answer; its JSON Schema is the structured-output constraint of LLM backends."""

    model_config = ConfigDict(extra="forbid")

    planning: str = Field(min_length=1)
    caption: str = Field(min_length=1)
    reasoning: str = Field(min_length=1)
    summary: str = Field(min_length=1)
    response: str = Field(min_length=1)


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
