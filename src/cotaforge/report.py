"""The run report: what each stage took in, put out and rejected, saved as JSON and Markdown."""

from __future__ import annotations

import json
from pathlib import Path

from cotaforge.models import StageReport, merge_reports
from cotaforge.store import RunDir, write_text_atomic


def run_report_markdown(run: RunDir, reports: list[StageReport], dataset: Path | None = None) -> str:
    lines = [f"# cotaforge run `{run.root.name}`", "",
             "| stage | in | out | rejected | parts done | parts skipped | seconds |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: |"]
    for r in reports:
        rejected = ", ".join(f"{reason} {n}" for reason, n in sorted(r.rejected.items())) or "0"
        lines.append(f"| {r.stage} | {r.rows_in} | {r.rows_out} | {rejected} | {r.parts_done} | {r.parts_skipped} "
                     f"| {r.seconds:.2f} |")
    header, rows = teacher_rows(reports)
    if rows:
        lines += ["", "| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines += ["", "*Sent by this run*: requests this run sent and answers it took from the cache (a skipped part "
                     "adds nothing); tokens and cost count cache misses only. *Held by the parts*: what the stage's "
                     "current parts cost the teacher when they were made, whichever run made them."]
    notes = [f"- {r.stage}: {note}" for r in reports for note in r.notes]
    if notes:
        lines += ["", "## Notes", *notes]
    total_rejected = sum(r.rejected_total for r in reports)
    lines += ["", f"Rejected rows: {total_rejected}, listed with reasons in `{run.root / 'rejects'}`."]
    if dataset:
        lines.append(f"Dataset: `{dataset}`.")
    return "\n".join(lines) + "\n"


TEACHER_COLUMNS = ("stage", "requests sent by this run", "cache hits", "cache misses", "retries", "failures", "prompt tokens",
                   "completion tokens", "cost (USD)", "requests held by the parts", "tokens held by the parts",
                   "cost held by the parts (USD)")


def teacher_rows(reports: list[StageReport]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The teacher table of a run (header, rows as text): per stage that used a teacher, what this run sent
    beside what the stage's parts hold, and a total row when more than one stage did."""
    used = [r for r in reports if r.teacher.requests or r.teacher.cache_hits or r.parts_teacher.requests
            or r.parts_teacher.cache_hits]
    if len(used) > 1:
        used.append(merge_reports("run total", used))
    rows = []
    for r in used:
        now, held = r.teacher, r.parts_teacher
        rows.append((r.stage, str(now.requests), str(now.cache_hits), str(now.cache_misses), str(now.retries),
                     str(now.failures), str(now.prompt_tokens), str(now.completion_tokens), f"{now.cost_usd:.4f}",
                     str(held.requests), str(held.prompt_tokens + held.completion_tokens), f"{held.cost_usd:.4f}"))
    return TEACHER_COLUMNS, rows


def write_run_report(run: RunDir, reports: list[StageReport], dataset: Path | None = None) -> str:
    markdown = run_report_markdown(run, reports, dataset)
    payload = {"run": str(run.root), "dataset": str(dataset) if dataset else None,
               "stages": [r.model_dump() for r in reports]}
    write_text_atomic(run.root / "report.json", json.dumps(payload, indent=1))
    write_text_atomic(run.root / "report.md", markdown)
    return markdown
