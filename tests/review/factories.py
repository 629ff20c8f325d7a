"""Run directories for the review tests, made by the real stages from the repository's example clips.

`build_run` runs ingest -> caption -> expand -> validate -> balance (the template teacher, no Prefect) on a
few spoken digits of examples/digits (FSDD, CC BY-SA 4.0; see examples/digits/README.md) and the drum hits
of examples/drums. `replicate_samples` multiplies the balanced samples under new ids for load tests, and
`make_hostile` writes hostile strings straight into sample rows: ingest refuses markup in labels, but the
app must stay safe whatever a run directory holds.
"""

from __future__ import annotations

import csv
import hashlib
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cotaforge.config import RunConfig, load_config
from cotaforge.store import RunDir

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
HOSTILE = '<img src=x onerror=alert(1)>'
HOSTILE_SCRIPT = '"><script>alert(document.cookie)</script>'


def build_run(root: Path, speakers: tuple[str, ...] = ("george", "jackson"), per_speaker: int = 8,
              drums: int = 6, overrides: list[str] | None = None) -> tuple[RunDir, RunConfig]:
    """A small real run under `root` (run name `rv`), balanced and ready for review."""
    from cotaforge.stages.balance import run_balance
    from cotaforge.stages.caption import run_caption
    from cotaforge.stages.expand import run_expand
    from cotaforge.stages.ingest import run_ingest
    from cotaforge.stages.validate import run_validate

    root.mkdir(parents=True, exist_ok=True)
    manifests = []
    for name, keep in (("digits", _digit_rows(speakers, per_speaker)), ("drums", _drum_rows(drums))):
        source = EXAMPLES / name / "manifest.csv"
        rows = list(csv.DictReader(source.open(encoding="utf-8")))
        picked = [dict(r, path=str((source.parent / r["path"]).resolve())) for r in rows if keep(r)]
        target = root / name / "manifest.csv"
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(picked)
        manifests.append(target)
    cfg = load_config(None, overrides, inputs__manifests=manifests, run__out_dir=root / "output", run__name="rv",
                      inputs__group_by="speaker", run__batch_size=16)
    run, _ = run_ingest(cfg)
    for stage in (run_caption, run_expand, run_validate, run_balance):
        stage(run, cfg)
    return run, cfg


def _digit_rows(speakers: tuple[str, ...], per_speaker: int):
    counts: dict[str, int] = {}

    def keep(row: dict) -> bool:
        if row["speaker"] not in speakers or counts.get(row["speaker"], 0) >= per_speaker:
            return False
        counts[row["speaker"]] = counts.get(row["speaker"], 0) + 1
        return True

    return keep


def _drum_rows(limit: int):
    seen: list[str] = []

    def keep(row: dict) -> bool:
        if len(seen) >= limit:
            return False
        seen.append(row["path"])
        return True

    return keep


def copy_run(run: RunDir, out_dir: Path) -> RunDir:
    """A private copy of a run under `out_dir/runs/` (without any review database), for a test to write to."""
    dest = out_dir / "runs" / run.root.name
    shutil.copytree(run.root, dest, ignore=shutil.ignore_patterns("review"))
    return RunDir(dest)


def run_config(run: RunDir, overrides: list[str] | None = None) -> RunConfig:
    """The run's own config, pointed at the folder the run now lives in."""
    return load_config(run.root / "config.yaml", overrides, run__out_dir=run.root.parent.parent)


def _rewrite_parts(run: RunDir, change) -> None:
    for part in sorted((run.root / "balance").glob("part-*.parquet")):
        table = pq.read_table(part)
        rows = change(table.to_pylist())
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), part)


def replicate_samples(run: RunDir, copies: int) -> int:
    """Multiply every balanced sample `copies` times under new sample ids; return the new sample count."""
    total = 0

    def change(rows: list[dict]) -> list[dict]:
        nonlocal total
        out = [dict(row, sample_id=hashlib.sha256(f"{row['sample_id']}:{i}".encode()).hexdigest()[:20])
               for row in rows for i in range(copies)]
        total += len(out)
        return out

    _rewrite_parts(run, change)
    return total


def make_hostile(run: RunDir) -> None:
    """Put hostile strings in the labels, metadata and every teacher-written text field of each sample."""

    def change(rows: list[dict]) -> list[dict]:
        for row in rows:
            row["labels"] = [HOSTILE]
            row["class_label"] = HOSTILE
            row["metadata"] = '{"speaker": "' + HOSTILE_SCRIPT.replace('"', '\\"') + '"}'
            row["question"] = HOSTILE_SCRIPT + " " + row["question"]
            row["options"] = [HOSTILE, *row["options"][1:]] if row["options"] else []
            for stage in ("planning", "caption", "reasoning", "summary", "response"):
                row[stage] = row[stage] + " " + HOSTILE
        return rows

    _rewrite_parts(run, change)


def form_value(html: str, name: str) -> str:
    """The value of the first hidden input called `name` in a page."""
    match = re.search(rf'name="{re.escape(name)}" value="([^"]*)"', html)
    if not match:
        raise ValueError(f"no input named {name!r} in the page")
    return match.group(1)
