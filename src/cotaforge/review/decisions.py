"""Annotators' decisions as publish applies them: one outcome per reviewed sample.

Each annotator's latest decision on a sample counts. A sample is dropped when any of them rejects it
(a doubly reviewed sample needs both to keep it); otherwise it is kept with the newest revision any of them
accepted or wrote. The `review` column holds JSON: decision (accept or edit), annotators, decided_at,
revision, and each annotator's action. Samples nobody reviewed are published as they were, `review` = "".
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from cotaforge.config import RunConfig, stable_hash
from cotaforge.review.db import Decision, ReviewStore, resolve_db_url, sqlite_path
from cotaforge.review.samples import apply_revision
from cotaforge.store import RunDir, json_dumps


@dataclass(frozen=True)
class ReviewOutcome:
    sample_id: str
    keep: bool
    revision: int
    review: str  # the `review` column's JSON
    fields: dict | None  # the applied revision's fields; None for the original text


def latest_decisions(decisions: list[Decision]) -> dict[str, dict[str, Decision]]:
    """{sample_id: {annotator: their latest decision}}; `decisions` come in the order they were made."""
    latest: dict[str, dict[str, Decision]] = {}
    for decision in decisions:
        latest.setdefault(decision.sample_id, {})[decision.annotator] = decision
    return latest


def review_outcomes(decisions: list[Decision], revision_fields: dict[tuple[str, int], dict]) -> dict[str, ReviewOutcome]:
    outcomes: dict[str, ReviewOutcome] = {}
    for sample_id, by_annotator in latest_decisions(decisions).items():
        latest = list(by_annotator.values())
        keep = all(d.action != "reject" for d in latest)
        revision = max(d.revision for d in latest) if keep else 0
        fields = revision_fields.get((sample_id, revision)) if revision else None
        if revision and fields is None:
            raise ValueError(f"sample {sample_id}: revision {revision} is missing from the review database; "
                             "restore the database or re-import the decisions")
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
        outcomes[sample_id] = ReviewOutcome(sample_id, keep, revision, json_dumps(review), fields)
    return outcomes


def load_decisions(run: RunDir, cfg: RunConfig, db_url: str | None = None) -> dict[str, ReviewOutcome]:
    """The outcome of every reviewed sample of the run; {} when there is no review database."""
    url = resolve_db_url(run, cfg, db_url)
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return {}
    store = ReviewStore(url)
    try:
        return review_outcomes(store.decisions(), store.revision_fields())
    finally:
        store.close()


def decisions_fingerprint(outcomes: dict[str, ReviewOutcome]) -> str:
    """Changes whenever a decision changes what publish writes."""
    return stable_hash([[o.sample_id, o.keep, o.review, o.fields] for _, o in sorted(outcomes.items())])


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

