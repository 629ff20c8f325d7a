"""The review queue: the next sample for an annotator, stratified across (class, prompt style, question type).

Each sample needs one annotator, or two for the configured double-annotation fraction. The next sample
comes from the cell with the fewest samples served so far (so every cell is reviewed at the same pace),
preferring a sample that already has one annotator and needs its second (so agreement data accrues
early), then the sample's seeded rank. Taking it is a claim in the database, atomic across annotators; a
claim left undecided for `review.claim_minutes` is freed for others. A sample an annotator skipped goes
back to the others and comes to that annotator again only when nothing else is left.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from cotaforge.review.db import ReviewStore, now_iso
from cotaforge.review.samples import Entry, RunSamples

@dataclass(frozen=True)
class QueueFilter:
    """Restricts the queue; an empty value means any. `flag` is a validator flag, 'any_flag' or 'no_flag'."""

    class_label: str = ""
    prompt_style: str = ""
    question_type: str = ""
    flag: str = ""

    def matches(self, entry: Entry) -> bool:
        if self.class_label and entry.class_label != self.class_label:
            return False
        if self.prompt_style and entry.prompt_style != self.prompt_style:
            return False
        if self.question_type and entry.question_type != self.question_type:
            return False
        if self.flag == "any_flag":
            return bool(entry.flags)
        if self.flag == "no_flag":
            return not entry.flags
        return not self.flag or self.flag in entry.flags

    def as_query(self) -> dict[str, str]:
        values = {"class": self.class_label, "style": self.prompt_style, "type": self.question_type,
                  "flag": self.flag}
        return {k: v for k, v in values.items() if v}


def choose_next(samples: RunSamples, taken: Counter, mine: set[str], served_per_cell: Counter,
                queue_filter: QueueFilter) -> Entry | None:
    """The sample to serve next, from counts alone (no database access): see the module docstring."""
    best: dict[tuple[str, str, str], Entry] = {}
    for entry in samples.entries:
        if entry.sample_id in mine or taken[entry.sample_id] >= samples.target(entry) or not queue_filter.matches(entry):
            continue
        current = best.get(entry.cell)
        if current is None or (-taken[entry.sample_id], entry.rank) < (-taken[current.sample_id], current.rank):
            best[entry.cell] = entry
    if not best:
        return None
    cell = min(best, key=lambda c: (served_per_cell[c], c))
    return best[cell]


@dataclass
class QueueState:
    """Live claims counted for one annotator: how many annotators hold each sample, per cell, and theirs."""

    taken: Counter
    served_per_cell: Counter
    mine: set[str]  # samples served to (or decided by) this annotator
    resume: list[Entry]  # theirs, served and not yet decided, matching the filter


def queue_state(samples: RunSamples, store: ReviewStore, annotator_id: int, queue_filter: QueueFilter) -> QueueState:
    stale_before = now_iso(-60.0 * samples.cfg.review.claim_minutes)
    state = QueueState(Counter(), Counter(), set(), [])
    for claim in store.claims():
        entry = samples.by_id.get(claim.sample_id)
        if entry is None:
            continue
        if claim.annotator_id == annotator_id:
            # One's own lapsed claim still counts as one's own: it is only freed when someone else takes it.
            state.mine.add(claim.sample_id)
            if not claim.done and queue_filter.matches(entry):
                state.resume.append(entry)
        elif not claim.done and claim.claimed_at < stale_before:
            continue
        state.taken[claim.sample_id] += 1
        state.served_per_cell[entry.cell] += 1
    return state


def remaining_for(samples: RunSamples, store: ReviewStore, annotator_id: int,
                  queue_filter: QueueFilter = QueueFilter()) -> int:
    """How many samples the queue can still give this annotator: theirs undecided, plus those with a free slot."""
    return remaining_in(samples, queue_state(samples, store, annotator_id, queue_filter), queue_filter)


def remaining_in(samples: RunSamples, state: QueueState, queue_filter: QueueFilter) -> int:
    """`remaining_for` from a queue state already read (made with the same filter)."""
    entries = samples.entries if queue_filter == QueueFilter() else [e for e in samples.entries if queue_filter.matches(e)]
    # Only samples someone holds can be short of a free slot; the rest all have one.
    held = [samples.by_id[sid] for sid in state.taken]
    full = sum(1 for e in held if state.taken[e.sample_id] >= samples.target(e) and queue_filter.matches(e))
    mine_open = sum(1 for sid in state.mine if state.taken[sid] < samples.target(samples.by_id[sid])
                    and queue_filter.matches(samples.by_id[sid]))
    return len(state.resume) + len(entries) - full - mine_open


def next_sample(samples: RunSamples, store: ReviewStore, annotator_id: int,
                queue_filter: QueueFilter = QueueFilter()) -> str | None:
    """Claim and return the next sample id for the annotator, or None when the queue is empty.

    Samples the annotator skipped come only when nothing else is left for them.
    """
    stale_before = now_iso(-60.0 * samples.cfg.review.claim_minutes)
    state = queue_state(samples, store, annotator_id, queue_filter)
    # A sample served before and not yet decided comes back first (its reservation renewed).
    for entry in sorted(state.resume, key=lambda e: e.rank):
        if store.try_claim(entry.sample_id, annotator_id, samples.target(entry), stale_before):
            return entry.sample_id
    skipped = store.skipped(annotator_id)
    taken = state.taken
    # Annotators asking at once compute the same best sample and race for it; a loser marks it taken and
    # tries the next, so the loop ends (at worst when nothing is left) and never reports a false "empty".
    for avoid in (state.mine | skipped, state.mine):
        while True:
            entry = choose_next(samples, taken, avoid, state.served_per_cell, queue_filter)
            if entry is None:
                break
            if store.try_claim(entry.sample_id, annotator_id, samples.target(entry), stale_before):
                return entry.sample_id
            taken[entry.sample_id] = samples.target(entry)  # another annotator took the last slot meanwhile
    return None
