"""Annotators' review decisions as publish applies them: read from the review database, one outcome per sample.

The review web app writes the database (`cotaforge.review.db`); this module only reads it, so `publish` and
the app share one reader and publish never loads the web app.

Each annotator's latest effective decision on a sample counts (an `undo` withdraws that annotator's
decision before it, so the one before that counts again). A sample is dropped when any of them rejects it
(a doubly reviewed sample needs both to keep it); otherwise it is kept with the newest revision any of them
accepted or wrote. A decision that names a revision the database does not hold cannot be applied: it is
skipped and listed, and never stops a publish. The `review` column holds JSON: decision (accept or edit),
annotators, decided_at, revision, and each annotator's action. Samples nobody reviewed are published as they
were, `review` = "".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import sqlalchemy as sa

from cotaforge.config import RunConfig, stable_hash
from cotaforge.models import COT_STAGES
from cotaforge.store import RunDir, json_dumps

# What an annotator may do to a sample; `undo` withdraws their previous decision on it.
ACTIONS = ("accept", "reject", "edit", "undo")
# The text fields an annotator may edit; `assistant_text` and `validation` are rebuilt from them.
EDIT_FIELDS = ("question", "options", "answer", *COT_STAGES)
STORED_EDIT_FIELDS = (*EDIT_FIELDS, "assistant_text", "validation")

# Light handles on the review tables (their full definitions live in cotaforge.review.db): enough to read.
_annotators = sa.table("annotators", sa.column("id"), sa.column("name"))
_decisions = sa.table("decisions", *(sa.column(c) for c in (
    "id", "nonce", "sample_id", "annotator_id", "action", "reason", "note", "revision", "created_at", "source")))
_revisions = sa.table("revisions", sa.column("sample_id"), sa.column("revision"), sa.column("fields"))


@dataclass(frozen=True)
class Decision:
    id: int
    nonce: str
    sample_id: str
    annotator: str
    action: str
    reason: str
    note: str
    revision: int
    created_at: str
    source: str


@dataclass(frozen=True)
class ReviewOutcome:
    sample_id: str
    keep: bool
    revision: int
    review: str  # the `review` column's JSON
    fields: dict | None  # the applied revision's fields; None for the original text
    rejected_by: tuple[str, ...] = ()  # the annotators whose latest decision is a reject


@dataclass
class ReviewResult:
    """Every reviewed sample's outcome, and the decisions that could not be applied (one message each)."""

    outcomes: dict[str, ReviewOutcome] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def default_db_url(run: RunDir) -> str:
    return f"sqlite:///{(run.root / 'review' / 'review.sqlite').resolve()}"


def resolve_db_url(run: RunDir, cfg: RunConfig, override: str | None = None) -> str:
    """The database to use: `--db`, else `review.db_url` of the config, else the run's SQLite file."""
    url = override or cfg.review.db_url or default_db_url(run)
    # SQLAlchemy's default PostgreSQL driver is psycopg2; cotaforge's `postgres` extra installs psycopg 3.
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def sqlite_path(url: str) -> Path | None:
    """The file of an SQLite URL, or None for other databases."""
    parsed = sa.engine.make_url(url)
    return Path(parsed.database) if parsed.get_backend_name() == "sqlite" and parsed.database else None


def select_decisions(conn: sa.Connection, sample_id: str | None = None, annotator_id: int | None = None,
                     since: str | None = None) -> list[Decision]:
    """Every stored decision in the order it was made (of one sample, of one annotator, made at or after
    `since`, when given)."""
    statement = (sa.select(_decisions, _annotators.c.name)
                 .join(_annotators, _annotators.c.id == _decisions.c.annotator_id)
                 .order_by(_decisions.c.id))
    if sample_id is not None:
        statement = statement.where(_decisions.c.sample_id == sample_id)
    if annotator_id is not None:
        statement = statement.where(_decisions.c.annotator_id == annotator_id)
    if since is not None:
        statement = statement.where(_decisions.c.created_at >= since)
    return [Decision(id=r.id, nonce=r.nonce, sample_id=r.sample_id, annotator=r.name, action=r.action,
                     reason=r.reason, note=r.note, revision=r.revision, created_at=r.created_at, source=r.source)
            for r in conn.execute(statement)]


def select_revision_fields(conn: sa.Connection, sample_id: str | None = None) -> dict[tuple[str, int], dict]:
    """Edited fields by (sample id, revision)."""
    statement = sa.select(_revisions.c.sample_id, _revisions.c.revision, _revisions.c.fields)
    if sample_id is not None:
        statement = statement.where(_revisions.c.sample_id == sample_id)
    return {(r[0], r[1]): json.loads(r[2]) for r in conn.execute(statement)}


def withdrawn_ids(decisions: list[Decision]) -> set[int]:
    """Ids of the decisions an `undo` withdrew: each undo withdraws its annotator's newest decision on that
    sample still in effect. `decisions` come in the order they were made."""
    stacks: dict[tuple[str, str], list[int]] = {}
    withdrawn: set[int] = set()
    for decision in decisions:
        stack = stacks.setdefault((decision.sample_id, decision.annotator), [])
        if decision.action != "undo":
            stack.append(decision.id)
        elif stack:
            withdrawn.add(stack.pop())
    return withdrawn


def latest_decisions(decisions: list[Decision]) -> dict[str, dict[str, Decision]]:
    """{sample_id: {annotator: their latest decision in effect}}; `decisions` come in the order they were made.

    An annotator whose every decision on a sample was withdrawn is absent.
    """
    withdrawn = withdrawn_ids(decisions)
    latest: dict[str, dict[str, Decision]] = {}
    for decision in decisions:
        if decision.action != "undo" and decision.id not in withdrawn:
            latest.setdefault(decision.sample_id, {})[decision.annotator] = decision
    return latest


def unappliable(decision: Decision, revision_fields: dict[tuple[str, int], dict]) -> str | None:
    """Why publish cannot apply `decision`, or None when it can."""
    if decision.action not in ACTIONS:
        return f"action {decision.action!r} is not one of {', '.join(ACTIONS)}"
    if decision.action in ("accept", "edit") and decision.revision != 0 \
            and (decision.sample_id, decision.revision) not in revision_fields:
        return f"revision {decision.revision} does not exist"
    return None


def review_outcomes(decisions: list[Decision], revision_fields: dict[tuple[str, int], dict]) -> ReviewResult:
    """The outcome of every reviewed sample; decisions that cannot be applied are skipped and listed."""
    result = ReviewResult()
    usable = []
    for decision in decisions:
        problem = unappliable(decision, revision_fields)
        if problem:
            result.skipped.append(f"decision {decision.id} by {decision.annotator} on sample {decision.sample_id} "
                                  f"({decision.action}, {decision.created_at}) skipped: {problem}")
        else:
            usable.append(decision)
    # A revision whose edit was undone is withdrawn: a decision still naming it keeps or drops the sample,
    # but its text is never published.
    withdrawn = withdrawn_ids(usable)
    dropped = {(d.sample_id, d.revision) for d in usable if d.action == "edit" and d.id in withdrawn}
    for sample_id, by_annotator in latest_decisions(usable).items():
        latest = list(by_annotator.values())
        rejected_by = tuple(sorted(name for name, d in by_annotator.items() if d.action == "reject"))
        keep = not rejected_by
        revision = max((d.revision for d in latest if (sample_id, d.revision) not in dropped), default=0) if keep else 0
        fields = revision_fields.get((sample_id, revision)) if revision else None
        review = {
            "decision": ("edit" if revision else "accept") if keep else "reject",
            "annotators": sorted(by_annotator),
            "decided_at": max(d.created_at for d in latest),
            "revision": revision,
            "actions": {name: d.action for name, d in sorted(by_annotator.items())},
        }
        reasons = sorted({d.reason for d in latest if d.action == "reject" and d.reason})
        if reasons:
            review["reasons"] = reasons
        result.outcomes[sample_id] = ReviewOutcome(sample_id, keep, revision, json_dumps(review), fields, rejected_by)
    return result


def load_decisions(run: RunDir, cfg: RunConfig, db_url: str | None = None) -> ReviewResult:
    """The outcome of every reviewed sample of the run; empty when there is no review database.

    Opens the database read-only in effect: nothing is created, so a run that was never reviewed publishes
    exactly as before.
    """
    url = resolve_db_url(run, cfg, db_url)
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return ReviewResult()
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("decisions"):
                return ReviewResult()
            return review_outcomes(select_decisions(conn), select_revision_fields(conn))
    finally:
        engine.dispose()


def decisions_fingerprint(outcomes: dict[str, ReviewOutcome]) -> str:
    """Changes whenever a decision changes what publish writes."""
    return stable_hash([[o.sample_id, o.keep, o.review, o.fields] for _, o in sorted(outcomes.items())])


def apply_revision(sample: dict, fields: dict) -> dict:
    """The sample with a revision's stored fields in place of its own."""
    return {**sample, **{name: fields[name] for name in STORED_EDIT_FIELDS if name in fields}}


def apply_decisions(table: pa.Table, outcomes: dict[str, ReviewOutcome]) -> tuple[pa.Table, int]:
    """One part's rows with the decisions applied: rejected rows out, edits in, `review` filled.

    Returns the new table and the number of rows dropped.
    """
    sample_ids = table["sample_id"].to_pylist()
    if not any(sid in outcomes for sid in sample_ids):
        return table, 0
    rows: list[dict] = []
    for row in table.to_pylist():
        outcome = outcomes.get(row["sample_id"])
        if outcome is None:
            rows.append(row)
        elif outcome.keep:
            revised = apply_revision(row, outcome.fields) if outcome.fields else row
            rows.append({**revised, "review": outcome.review})
    return pa.Table.from_pylist(rows, schema=table.schema), table.num_rows - len(rows)
