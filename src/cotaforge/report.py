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
    usage = [r for r in reports if r.teacher.requests or r.teacher.cache_hits]
    if usage:
        total = merge_reports("run total", usage) if len(usage) > 1 else None
        lines += ["", "| stage | teacher requests sent | cache hits | cache misses | retries | failures | prompt tokens "
                      "| completion tokens | cost (USD) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r.stage} | {r.teacher.requests} | {r.teacher.cache_hits} | {r.teacher.cache_misses} | "
                  f"{r.teacher.retries} | {r.teacher.failures} | {r.teacher.prompt_tokens} | "
                  f"{r.teacher.completion_tokens} | {r.teacher.cost_usd:.4f} |" for r in usage + ([total] if total else [])]
        lines.append("Skipped parts count what their teacher used when they were made; tokens and cost count "
                     "cache misses only.")
    notes = [f"- {r.stage}: {note}" for r in reports for note in r.notes]
    if notes:
        lines += ["", "## Notes", *notes]
    total_rejected = sum(r.rejected_total for r in reports)
    lines += ["", f"Rejected rows: {total_rejected}, listed with reasons in `{run.root / 'rejects'}`."]
    if dataset:
        lines.append(f"Dataset: `{dataset}`.")
    return "\n".join(lines) + "\n"


def write_run_report(run: RunDir, reports: list[StageReport], dataset: Path | None = None) -> str:
    markdown = run_report_markdown(run, reports, dataset)
    payload = {"run": str(run.root), "dataset": str(dataset) if dataset else None,
               "stages": [r.model_dump() for r in reports]}
    write_text_atomic(run.root / "report.json", json.dumps(payload, indent=1))
    write_text_atomic(run.root / "report.md", markdown)
    return markdown
