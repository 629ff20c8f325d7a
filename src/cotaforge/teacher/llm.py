"""LLM teachers: staged generation with versioned Jinja2 prompts and structured output.

Each teacher task (caption, question, cot, judge) renders its prompt from `prompts/`, asks for JSON that
fits a pydantic model, and re-validates every answer with that model (plus, for questions, checks that
the wording fits the fixed answer). An answer that is cut off (`finish_reason == "length"`), does not
parse or does not validate is asked for again with the next seed, at most `teacher.output_attempts`
times; in plain JSON mode the first bad answer gets one repair request instead. Each attempt is its own
request with its own cache entry, so a re-run replays attempts already paid for and sends only new ones.
A request that still fails becomes a `TeacherFailure` (a reject row that keeps the raw output).

Backends differ only in how a round of requests is answered: `openai` sends them concurrently to
OpenAI-compatible servers (vLLM, llama.cpp) through `ChatClient`; `vllm` generates them in-process
(`cotaforge.teacher.offline`).
"""

from __future__ import annotations

import base64
import io
import re
import wave
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

from pydantic import BaseModel

from cotaforge import progress
from cotaforge.config import RunConfig, stable_hash
from cotaforge.cot import render_user_text
from cotaforge.describe import format_seconds
from cotaforge.errors import ConfigError
from cotaforge.prompts import ChatPrompt, load_chat_prompt
from cotaforge.scene_questions import SOUND_ANSWER_FORMS, YES_NO_FORMS
from cotaforge.teacher.base import (CaptionRequest, CaptionText, CotRequest, CotStages, JudgeRequest, JudgeVerdict,
                                    QuestionDraft, QuestionRequest, Teacher, TeacherFailure)
from cotaforge.teacher.client import ChatAnswer, TransportFailure, request_body, sends_system_role
from cotaforge.teacher.structured import (model_schema, parse_reply, repair_messages, response_format,
                                          schema_instruction)

COT_VARIABLES = frozenset({"description", "facts", "question", "question_type", "answer", "answer_text",
                           "response_rule", "schema", "timeline"})
QUESTION_VARIABLES = frozenset({"question_type", "answer_text", "candidate", "field", "more", "less", "reference",
                                "n_wrong_options", "description", "schema", "form", "form_task", "x", "y", "options"})
# What a scene question of each form asks, for the question writer ({x} and {y}: the sounds asked about).
FORM_TASKS = {
    "count_class": 'how many times "{x}" is heard', "count_all": "how many separate sounds are heard",
    "first": "which sound comes first", "last": "which sound comes last",
    "after": 'which sound comes right after "{x}"', "before": 'whether "{x}" is heard before "{y}" (yes or no)',
    "longest": "which sound lasts longest", "shortest": "which sound is the shortest",
    "louder": 'which is louder, "{x}" or "{y}"', "loudest": "which sound is the loudest",
    "present": 'whether "{x}" can be heard in the recording (yes or no)',
    "onset": 'at what time, in seconds from the start, "{x}" begins',
}
CAPTION_TEXT_VARIABLES = frozenset({"sounds", "details", "facts", "schema"})
CAPTION_AUDIO_VARIABLES = frozenset({"sounds", "start_s", "end_s", "duration_s", "schema"})
JUDGE_VARIABLES = frozenset({"description", "question", "answer", "reasoning", "summary", "response", "schema"})
MIN_WINDOW_S = 1.0  # a tail shorter than this joins the previous window instead of being captioned alone


@dataclass
class Call:
    """One thing to ask the teacher: its prompt, the model its answer must fit, an extra check.

    The messages are rendered when first needed, on the engine's thread, so the first requests of a large
    batch go out while later ones are still to be rendered.
    """

    task: str  # caption, question, cot or judge: accounting and cache bookkeeping
    item_id: str
    prompt: ChatPrompt
    values: dict[str, Any]
    output: type[BaseModel]
    schema: dict[str, Any]
    base_seed: int
    check: Callable[[Any], str | None] | None = None  # a reason when a valid answer still does not fit

    @property
    def prompt_version(self) -> str:
        return self.prompt.stem

    @cached_property
    def messages(self) -> list[dict[str, Any]]:
        system, user = self.prompt.render(schema=schema_instruction(self.schema), **self.values)
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    @cached_property
    def seed(self) -> int:
        """A seed per item, so answers vary across items; attempt k adds k. A seed alone does not make a
        server's answer reproducible (vLLM's online batching changes the numerics unless the server runs with
        VLLM_BATCH_INVARIANT=1): the response cache is what makes a re-run give the same answers."""
        return int(stable_hash([self.base_seed, self.task, self.item_id], length=8), 16) % 2**31


@dataclass
class Job:
    """The attempts of one Call: which body to send next, and what the answers so far add up to."""

    call: Call
    settings: "GenerationSettings"
    attempt: int = 0
    repair: list[dict[str, Any]] | None = None  # plain JSON mode: the conversation asking for a fix
    repaired: bool = False
    result: BaseModel | TeacherFailure | None = None

    @property
    def done(self) -> bool:
        return self.result is not None

    def body(self) -> dict[str, Any]:
        s = self.settings
        return request_body(s.model, self.repair or self.call.messages, s.max_tokens, s.temperature,
                            self.call.seed + self.attempt,
                            response_format(s.mode, self.call.task, self.call.schema))

    def take(self, answer: ChatAnswer) -> None:
        if answer.finish_reason == "length":
            self._next_attempt("teacher_truncated", "the answer reached max_tokens and was cut off", answer.content)
            return
        try:
            value = parse_reply(answer.content, self.call.output)
            problem = self.call.check(value) if self.call.check else None
        except ValueError as exc:
            value, problem = None, str(exc)
        if problem is None:
            self.result = value
        elif self.settings.mode == "json" and not self.repaired:
            self.repaired = True
            self.repair = repair_messages(self.call.messages, answer.content, problem)
        else:
            self._next_attempt("teacher_invalid_output", problem, answer.content)

    def give_up(self, failure: TransportFailure) -> None:
        self.result = TeacherFailure(self.call.item_id, failure.reason, failure.message, failure.raw)

    def _next_attempt(self, reason: str, message: str, raw: str) -> None:
        self.attempt += 1
        self.repair = None
        if self.attempt >= self.settings.output_attempts:
            self.result = TeacherFailure(self.call.item_id, reason,
                                         f"{self.call.task}: {message} (after {self.attempt} attempts)", raw)


@dataclass(frozen=True)
class GenerationSettings:
    model: str
    mode: str
    max_tokens: int
    temperature: float
    output_attempts: int

    @classmethod
    def from_config(cls, cfg: RunConfig) -> "GenerationSettings":
        t = cfg.teacher
        return cls(t.model, t.structured_output, t.max_tokens, t.temperature, t.output_attempts)


class Engine(Protocol):
    """Answers Jobs until each is done; calls `on_answer(job, answer)` for every answer it gets."""

    def solve(self, jobs: list[Job], on_answer: Callable[[Job, ChatAnswer], None]) -> None: ...


class OpenAIEngine:
    """Workers on the shared client's loop take jobs one at a time: a slow answer delays only its own job, and
    there are only about twice as many workers as request slots, so a batch of thousands does not first spend
    its time preparing requests that must wait anyway."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def solve(self, jobs: list[Job], on_answer: Callable[[Job, ChatAnswer], None]) -> None:
        async def drive(job: Job) -> None:
            while not job.done:
                try:
                    answer = await self.client.fetch(job.body(), job.call.prompt_version, job.call.task)
                except TransportFailure as failure:
                    job.give_up(failure)
                    on_answer(job, ChatAnswer("", "", 0, 0, cached=False, sends=failure.sends))
                    return
                on_answer(job, answer)
                job.take(answer)

        queue = iter(jobs)  # shared by the workers; taking the next job never awaits, so no lock is needed

        async def worker() -> None:
            for job in queue:
                await drive(job)

        self.client.run([worker() for _ in range(min(len(jobs), 2 * self.client.capacity + 8))])


def fact_lines(facts: dict) -> list[str]:
    """The measured facts as short 'name: value' lines for prompts."""
    lines = [f"duration: {format_seconds(facts['duration_s'])}",
             f"average loudness: {facts['loudness_dbfs']:.1f} dBFS (peak {facts['peak_dbfs']:.1f} dBFS)",
             f"spectral centroid: {facts['spectral_centroid_hz']:.0f} Hz",
             f"distinct onsets: {facts['onset_count']}",
             f"share of near-silent frames: {facts['silence_ratio']:.0%}"]
    if facts.get("tempo_bpm"):
        lines.append(f"tempo: about {facts['tempo_bpm']:.0f} beats per minute")
    f0 = facts.get("f0_median_hz")
    lines.append(f"median pitch: {f0:.0f} Hz" if f0 else "pitch: no stable pitch (noisy or percussive)")
    return lines


def timeline_lines(events: tuple) -> list[str]:
    """What was heard in a scene, one line per sound in order: its times, what it sounds like and its level."""
    ordered = sorted(events, key=lambda e: (e.onset_s, e.offset_s))
    return [f'from {e.onset_s:.2f} s to {e.offset_s:.2f} s ({e.duration_s:.2f} s long): a "{e.class_label}" sound, '
            f"at about {e.level_dbfs:.0f} dBFS" for e in ordered]


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[\"'.,!?;:]", " ", text.casefold()).split())


def _mentions(text: str, phrase: str) -> bool:
    phrase = _norm(phrase)
    return bool(phrase) and re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", _norm(text)) is not None


def question_problem(req: QuestionRequest, draft: QuestionDraft) -> str | None:
    """Why a drafted question does not fit its fixed answer, or None when it does."""
    question = draft.question.strip()
    if len(question) > 400:
        return "the question is longer than 400 characters"
    if req.form:  # a scene question: options are fixed by cotaforge
        if draft.wrong_options:
            return "leave wrong_options empty; the options are given"
        missing = [a for a in req.asked if not _mentions(question, a)]
        if missing:
            return f'the question must name "{missing[0]}"'
        if req.form in SOUND_ANSWER_FORMS and req.answer_text not in req.asked and _mentions(question, req.answer_text):
            return f'the question gives away the answer "{req.answer_text}"'
        return None
    if req.question_type == "multiple_choice":
        wrong = [o.strip() for o in draft.wrong_options]
        if len(wrong) != req.n_wrong_options:
            return f"write exactly {req.n_wrong_options} wrong options, not {len(wrong)}"
        if any(not o or len(o) > 80 for o in wrong):
            return "every wrong option must be a short phrase (1 to 80 characters)"
        if len({_norm(o) for o in wrong}) != len(wrong):
            return "the wrong options must differ from each other"
        if any(_norm(o) in {_norm(v) for v in (req.answer_text, *req.avoid)} for o in wrong):
            return f'a wrong option repeats the correct answer "{req.answer_text}"'
    elif draft.wrong_options:
        return f"a {req.question_type} question has no options; leave wrong_options empty"
    if req.question_type in ("multiple_choice", "open_ended") and _mentions(question, req.answer_text):
        return f'the question gives away the answer "{req.answer_text}"'
    if req.question_type == "yes_no" and not _mentions(question, req.asked_value):
        return f'the question must ask about "{req.asked_value}"'
    if req.question_type == "comparison":
        g = req.grounding
        number = re.search(r"-?\d+(?:\.\d+)?", str(g.get("reference", "")))
        if not (_mentions(question, g["more"]) and _mentions(question, g["less"])):
            return f'the question must contain "{g["more"]}" and "{g["less"]}"'
        if number and number.group(0) not in question:
            return f'the question must name the reference, {g["reference"]}'
    return None


def _scene_answer_kind(req: CotRequest) -> str:
    """multiple_choice, yes_no, count, onset or sound: how a scene question's answer is written."""
    if req.options:
        return "multiple_choice"
    if req.answer in ("yes", "no") and req.form in YES_NO_FORMS:
        return "yes_no"
    return {"count_class": "count", "count_all": "count", "onset": "onset"}.get(req.form, "sound")


def _response_rule(req: CotRequest) -> str:
    kind = _scene_answer_kind(req) if req.events else req.question_type
    if kind == "count":
        return f'"response" and "summary" must both state the number {req.answer} in digits.'
    if kind == "onset":
        return (f'"response" and "summary" must both give the start time as {req.answer} seconds, written '
                f'"{req.answer} s" or "{req.answer} seconds".')
    if kind == "sound":
        return f'"response" and "summary" must both name "{req.answer_text}".'
    if kind == "multiple_choice":
        return (f'In "response", name the correct option and end with its letter, e.g. "... so the answer is '
                f'{req.answer}." In "summary", name option {req.answer} and no other option.')
    if kind == "yes_no":
        word = req.answer.capitalize()
        opposite = "no" if req.answer == "yes" else "yes"
        return (f'"response" must begin with "{word}". "summary" must contain the word "{req.answer}" and never '
                f'the word "{opposite}".')
    if req.question_type == "comparison":
        g = req.grounding
        opposite = g["less"] if req.answer == g["more"] else g["more"]
        return (f'"response" and "summary" must both contain the word "{req.answer}" and never the word '
                f'"{opposite}".')
    return f'"response" and "summary" must both name {req.answer_text}.'


def _answer_line(req: CotRequest) -> str:
    if req.events:
        kind = _scene_answer_kind(req)
        if kind == "multiple_choice":
            return f"{req.answer} ({req.answer_text})"
        return {"onset": f"{req.answer} seconds", "sound": f'"{req.answer_text}"'}.get(kind, req.answer)
    if req.question_type == "multiple_choice":
        return f"{req.answer} ({req.answer_text})"
    if req.question_type == "yes_no":
        return (f'yes: the clip is {req.answer_text}' if req.answer == "yes"
                else f'no: the clip is {req.answer_text}, not "{req.asked_value}"')
    if req.question_type == "comparison":
        g = req.grounding
        return f"{req.answer} (measured {g['measured']}, against {g['reference']})"
    return req.answer_text


def split_wav(wav: bytes, window_s: float) -> list[tuple[float, float, bytes]]:
    """(start_s, end_s, WAV bytes) windows of at most `window_s`; a short tail joins the window before it."""
    with wave.open(io.BytesIO(wav)) as reader:
        params = reader.getparams()
        frames = reader.readframes(params.nframes)
    rate, width = params.framerate, params.sampwidth * params.nchannels
    total = params.nframes
    step = int(window_s * rate)
    bounds = list(range(0, total, step)) + [total]
    if len(bounds) > 2 and (bounds[-1] - bounds[-2]) < MIN_WINDOW_S * rate:
        bounds.pop(-2)
    windows = []
    for start, end in zip(bounds, bounds[1:]):
        out = io.BytesIO()
        with wave.open(out, "wb") as writer:
            writer.setparams(params)
            writer.writeframes(frames[start * width:end * width])
        windows.append((start / rate, end / rate, out.getvalue()))
    return windows


def audio_part(wav: bytes) -> dict[str, Any]:
    """The OpenAI `input_audio` content part: base64 WAV (vLLM decodes it for the audio model)."""
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode("ascii"), "format": "wav"}}


class LLMTeacher(Teacher):
    """Writes captions, questions, chains of thought and verdicts through an Engine."""

    def __init__(self, cfg: RunConfig, stage: str, engine: "Engine | None", backend: str) -> None:
        super().__init__()
        self.backend = backend
        self.model = cfg.teacher.model
        self.cfg = cfg
        self.stage = stage
        self.engine = engine
        self.settings = GenerationSettings.from_config(cfg)

    def prompt_versions(self) -> list[str]:
        t, c = self.cfg.teacher, self.cfg.caption
        if self.stage == "caption":
            return [c.text_prompt if c.mode == "text_llm" else c.audio_prompt]
        if self.stage == "validate":
            return [t.judge_prompt]
        from cotaforge.config import LLM_PROMPT_STYLE

        versions = [t.cot_prompt]
        if LLM_PROMPT_STYLE in self.cfg.expand.prompt_styles:
            versions.append(t.question_prompt)
        return versions

    def parameters(self) -> dict:
        s = self.settings
        parameters = {"temperature": s.temperature, "max_tokens": s.max_tokens, "structured_output": s.mode,
                      "output_attempts": s.output_attempts, "seed": self.cfg.run.seed}
        if not sends_system_role(self.model, self.cfg.teacher.system_role):
            parameters["system_role"] = False  # folded prompts are other requests; absent otherwise, as before
        return parameters

    # -- the tasks --------------------------------------------------------------------------------------------

    def write_cots(self, requests: list[CotRequest]) -> list[CotStages | TeacherFailure]:
        prompt = load_chat_prompt(self.cfg.teacher.cot_prompt, COT_VARIABLES)
        if "timeline" not in prompt.variables and any(r.events for r in requests):
            raise ConfigError(f"teacher.cot_prompt {prompt.stem} cannot write chains of thought for scenes (it has no "
                              "timeline); use cot_llm.v2")
        schema = model_schema(CotStages)
        calls = [self._call("cot", r.sample_id, prompt, CotStages, schema, r.seed, None,
                            description=r.caption, facts=fact_lines(r.facts),
                            question=render_user_text(r.question, r.options), question_type=r.question_type,
                            answer=r.answer, answer_text=_answer_line(r), response_rule=_response_rule(r),
                            timeline=timeline_lines(r.events))
                 for r in requests]
        return self._solve(calls)  # type: ignore[return-value]

    def write_questions(self, requests: list[QuestionRequest]) -> list[QuestionDraft | TeacherFailure]:
        prompt = load_chat_prompt(self.cfg.teacher.question_prompt, QUESTION_VARIABLES)
        if "form_task" not in prompt.variables and any(r.form for r in requests):
            raise ConfigError(f"teacher.question_prompt {prompt.stem} cannot word scene questions; use question_llm.v2")
        calls = []
        for r in requests:
            schema = model_schema(QuestionDraft)
            n = r.n_wrong_options
            schema["properties"]["wrong_options"].update(minItems=n, maxItems=n)
            schema["required"] = ["question", "wrong_options"]
            g = r.grounding
            calls.append(self._call(
                "question", r.sample_id, prompt, QuestionDraft, schema, r.seed,
                lambda draft, r=r: question_problem(r, draft),
                question_type=r.question_type, answer_text=r.answer_text, candidate=r.asked_value,
                field=r.field_name, more=g.get("more", ""), less=g.get("less", ""), reference=g.get("reference", ""),
                n_wrong_options=n, description=r.caption, form=r.form,
                form_task=FORM_TASKS.get(r.form, "").format(x=r.asked[0] if r.asked else "",
                                                             y=r.asked[1] if len(r.asked) > 1 else ""),
                x=r.asked[0] if r.asked else "", y=r.asked[1] if len(r.asked) > 1 else "", options=list(r.options)))
        return self._solve(calls)  # type: ignore[return-value]

    def write_captions(self, requests: list[CaptionRequest]) -> list[CaptionText | TeacherFailure]:
        mode, c = self.cfg.caption.mode, self.cfg.caption
        schema = model_schema(CaptionText)
        if mode == "text_llm":
            prompt = load_chat_prompt(c.text_prompt, CAPTION_TEXT_VARIABLES)
            calls = [self._call("caption", r.clip_id, prompt, CaptionText, schema, r.seed, None,
                                sounds=", ".join(r.labels), details=[f"{k.replace('_', ' ')}: {v}"
                                                                     for k, v in r.metadata.items()],
                                facts=fact_lines(r.facts)) for r in requests]
            return self._solve(calls)  # type: ignore[return-value]
        prompt = load_chat_prompt(c.audio_prompt, CAPTION_AUDIO_VARIABLES)
        calls, owners = [], []
        for index, r in enumerate(requests):
            if r.audio_wav is None:
                raise ValueError(f"clip {r.clip_id}: caption mode audio_llm needs the clip's audio (read_clips "
                                 "with_audio=True)")
            windows = split_wav(r.audio_wav, c.window_s)
            duration_s = windows[-1][1]
            for start_s, end_s, wav in windows:
                call = self._call("caption", f"{r.clip_id}@{start_s:g}s", prompt, CaptionText, schema, r.seed, None,
                                  sounds=", ".join(r.labels), start_s=start_s, end_s=end_s, duration_s=duration_s)
                call.messages[-1]["content"] = [audio_part(wav), {"type": "text", "text": call.messages[-1]["content"]}]
                calls.append(call)
                owners.append((index, start_s, end_s, len(windows)))
        answers = self._solve(calls)
        merged: list[list[str] | TeacherFailure] = [[] for _ in requests]
        for (index, start_s, end_s, count), answer in zip(owners, answers):
            if isinstance(merged[index], TeacherFailure):
                continue
            if isinstance(answer, TeacherFailure):
                merged[index] = TeacherFailure(requests[index].clip_id, answer.reason, answer.message, answer.raw)
                continue
            text = answer.caption.strip()  # type: ignore[union-attr]
            merged[index].append(text if count == 1 else  # type: ignore[union-attr]
                                 f"From {start_s:.0f} s to {end_s:.0f} s: {text}")
        return [m if isinstance(m, TeacherFailure) else CaptionText(caption=" ".join(m)) for m in merged]

    def judge(self, requests: list[JudgeRequest]) -> list[JudgeVerdict | TeacherFailure]:
        prompt = load_chat_prompt(self.cfg.teacher.judge_prompt, JUDGE_VARIABLES)
        schema = model_schema(JudgeVerdict)
        calls = [self._call("judge", r.sample_id, prompt, JudgeVerdict, schema, r.seed, None,
                            description=r.caption, question=r.question, answer=r.answer, reasoning=r.reasoning,
                            summary=r.summary, response=r.response) for r in requests]
        return self._solve(calls)  # type: ignore[return-value]

    # -- plumbing ---------------------------------------------------------------------------------------------

    def _call(self, task: str, item_id: str, prompt: ChatPrompt, output: type[BaseModel], schema: dict, seed: int,
              check: Callable[[Any], str | None] | None, **values: Any) -> Call:
        return Call(task, item_id, prompt, values, output, schema, seed, check)

    def _solve(self, calls: list[Call]) -> list[BaseModel | TeacherFailure]:
        jobs = [Job(call, self.settings) for call in calls]
        self.engine.solve(jobs, self._count)
        for job in jobs:
            if isinstance(job.result, TeacherFailure):
                self.usage.failures += 1
        return [job.result for job in jobs]  # type: ignore[misc]

    def _count(self, job: Job, answer: ChatAnswer) -> None:
        """Accounting for one answer (or one failed request); runs on the engine's thread."""
        usage, t = self.usage, self.cfg.teacher
        usage.requests += answer.sends
        usage.retries += max(answer.sends - 1, 0)
        if job.attempt or job.repair is not None:
            usage.retries += 1  # a re-ask after an unusable answer
        if answer.cached:
            usage.cache_hits += 1
        elif answer.finish_reason:
            usage.cache_misses += 1
            usage.prompt_tokens += answer.prompt_tokens
            usage.completion_tokens += answer.completion_tokens
            usage.cost_usd += (answer.prompt_tokens * t.usd_per_million_prompt_tokens
                               + answer.completion_tokens * t.usd_per_million_completion_tokens) / 1e6
        progress.teacher(self.stage, samples=1 if job.call.task == "cot" else 0,
                         tokens=0 if answer.cached else answer.completion_tokens)
