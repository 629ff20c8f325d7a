"""The tagged chain-of-thought format (Audio-Reasoner's), rendered and parsed in one place.

    <THINK><PLANNING>…</PLANNING><CAPTION>…</CAPTION><REASONING>…</REASONING><SUMMARY>…</SUMMARY></THINK>
    <RESPONSE>…</RESPONSE>
"""

from __future__ import annotations

import string

from cotaforge.models import COT_STAGES

def option_letter(index: int) -> str:
    return string.ascii_uppercase[index]


def render_user_text(question: str, options: list[str]) -> str:
    """The user turn: the question, then one line per option ('A. text')."""
    lines = [question] + [f"{option_letter(i)}. {text}" for i, text in enumerate(options)]
    return "\n".join(lines)


def render_assistant_text(stages: dict[str, str]) -> str:
    think = "".join(f"<{s.upper()}>\n{stages[s].strip()}\n</{s.upper()}>\n" for s in COT_STAGES[:-1])
    return f"<THINK>\n{think}</THINK>\n<RESPONSE>\n{stages['response'].strip()}\n</RESPONSE>"


def parse_assistant_text(text: str) -> tuple[dict[str, str], list[str]]:
    """Stages found in a tagged text, and the format problems (reason codes) met on the way.

    missing_stage, repeated_stage, stage_order (stages out of order, THINK missing, or RESPONSE inside THINK).
    Plain substring searches: this runs for every sample, and is many times faster than a regex scan.
    """
    problems: set[str] = set()
    stages: dict[str, str] = {}
    starts: list[int] = []
    for name in COT_STAGES:
        tag = name.upper()
        start = text.find(f"<{tag}>")
        end = text.find(f"</{tag}>", start + 1) if start >= 0 else -1
        if start < 0 or end < 0:
            problems.add("missing_stage")
            continue
        if text.find(f"<{tag}>", start + 1) >= 0:
            problems.add("repeated_stage")
        stages[name] = text[start + len(tag) + 2:end].strip()
        starts.append(start)
    think_open, think_close = text.find("<THINK>"), text.find("</THINK>")
    response = text.find("<RESPONSE>")
    if (starts != sorted(starts) or think_open < 0 or think_close < think_open
            or (response >= 0 and response < think_close)):
        problems.add("stage_order")
    return stages, sorted(problems)
