"""Progress and quality of a review: counts per annotator and per cell, acceptance rates and agreement.

Agreement compares each annotator's latest action (accept, edit or reject) on the samples two or more
annotators reviewed: Cohen's kappa for every pair, Krippendorff's alpha (nominal) over all of them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from cotaforge.review.agreement import krippendorff_alpha_nominal, pairwise_kappas
from cotaforge.decisions import Decision
from cotaforge.decisions import latest_decisions
from cotaforge.review.samples import RunSamples


@dataclass
class ReviewSummary:
    samples: int
    reviewed: int
    planned: int  # annotations the queue aims for (one per sample, two for the doubly annotated share)
    decisions: int  # decision rows stored, re-decisions included
    annotators: list[dict] = field(default_factory=list)
    cells: list[dict] = field(default_factory=list)
    pairs: list[dict] = field(default_factory=list)
    alpha: float | None = None
    double_items: int = 0


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def summarize(samples: RunSamples, decisions: list[Decision]) -> ReviewSummary:
    latest = {sid: by for sid, by in latest_decisions(decisions).items() if sid in samples.by_id}
    per_annotator: dict[str, Counter] = {}
    for by_annotator in latest.values():
        for name, decision in by_annotator.items():
            per_annotator.setdefault(name, Counter())[decision.action] += 1
    annotator_rows = []
    for name, counts in sorted(per_annotator.items()):
        total = sum(counts.values())
        annotator_rows.append({"name": name, "reviewed": total, "accept": counts["accept"], "edit": counts["edit"],
                               "reject": counts["reject"],
                               "acceptance": _rate(counts["accept"] + counts["edit"], total)})

    cells: dict[tuple[str, str, str], Counter] = {}
    for entry in samples.entries:
        counts = cells.setdefault(entry.cell, Counter())
        counts["samples"] += 1
        by_annotator = latest.get(entry.sample_id)
        if by_annotator:
            counts["reviewed"] += 1
            counts["kept" if all(d.action != "reject" for d in by_annotator.values()) else "rejected"] += 1
    cell_rows = [{"class": c, "style": s, "type": t, "samples": n["samples"], "reviewed": n["reviewed"],
                  "kept": n["kept"], "rejected": n["rejected"], "acceptance": _rate(n["kept"], n["reviewed"])}
                 for (c, s, t), n in sorted(cells.items())]

    units = {sid: {name: d.action for name, d in by.items()} for sid, by in latest.items() if len(by) >= 2}
    pairs = [{"a": a, "b": b, "items": items, "kappa": kappa}
             for (a, b), (kappa, items) in pairwise_kappas(units).items()]
    return ReviewSummary(
        samples=len(samples.entries), reviewed=len(latest), planned=sum(samples.target(e) for e in samples.entries),
        decisions=sum(1 for d in decisions if d.sample_id in samples.by_id), annotators=annotator_rows,
        cells=cell_rows, pairs=pairs, alpha=krippendorff_alpha_nominal(units), double_items=len(units))
