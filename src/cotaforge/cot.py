"""The tagged chain-of-thought format (Audio-Reasoner's), rendered and parsed in one place.

    <THINK><PLANNING>…</PLANNING><CAPTION>…</CAPTION><REASONING>…</REASONING><SUMMARY>…</SUMMARY></THINK>
    <RESPONSE>…</RESPONSE>
"""

from __future__ import annotations

import re
import string

from cotaforge.models import COT_STAGES

_TAG = re.compile(r"<(/?)(THINK|PLANNING|CAPTION|REASONING|SUMMARY|RESPONSE)>")


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
    """Stages found in a tagged text, and the format problems (reason codes) met on the way."""
    problems: list[str] = []
    stages: dict[str, str] = {}
    order: list[str] = []
    for name in COT_STAGES:
        tag = name.upper()
        found = re.findall(rf"<{tag}>(.*?)</{tag}>", text, flags=re.DOTALL)
        if not found:
            problems.append("missing_stage")
            continue
        if len(found) > 1:
            problems.append("repeated_stage")
        stages[name] = found[0].strip()
    opens = [m.group(2).lower() for m in _TAG.finditer(text) if not m.group(1) and m.group(2) != "THINK"]
    order = [name for name in opens if name in COT_STAGES]
    if order != [n for n in COT_STAGES if n in order] or "<THINK>" not in text or "</THINK>" not in text:
        problems.append("stage_order")
    elif text.find("</THINK>") > text.find("<RESPONSE>") >= 0:
        problems.append("stage_order")
    return stages, sorted(set(problems))
