"""The queue: stratified across (class, prompt style, question type), double annotation, filters, claims."""

from __future__ import annotations

from collections import Counter

import sqlalchemy as sa

from cotaforge.review.db import ReviewStore, claims, default_db_url
from cotaforge.review.queue import QueueFilter, next_sample
from cotaforge.review.samples import RunSamples
from cotaforge.store import RunDir

from .factories import run_config


def _setup(run: RunDir, *overrides: str) -> tuple[RunSamples, ReviewStore, list[int]]:
    samples = RunSamples(run, run_config(run, list(overrides)))
    store = ReviewStore(default_db_url(run))
    ids = [store.annotator_for_token(store.add_annotator(name)).id for name in ("ana", "bo", "cy")]
    return samples, store, ids


def _decide(store: ReviewStore, annotator_id: int, sample_id: str) -> None:
    store.record_decision(nonce=f"{annotator_id}:{sample_id}", sample_id=sample_id, annotator_id=annotator_id,
                          action="accept")


def test_served_samples_spread_evenly_over_cells(run: RunDir) -> None:
    samples, store, (ana, _, _) = _setup(run, "review.double_fraction=0")
    cells = Counter(e.cell for e in samples.entries)
    served: Counter = Counter()
    for _ in range(2 * len(cells)):
        sample_id = next_sample(samples, store, ana)
        _decide(store, ana, sample_id)
        served[samples.by_id[sample_id].cell] += 1
    # Every cell holds at least two samples here, so two rounds serve each cell exactly twice.
    assert min(cells.values()) >= 2 and set(served.values()) == {2} and len(served) == len(cells)


def test_an_undecided_sample_comes_back_to_its_annotator(run: RunDir) -> None:
    samples, store, (ana, bo, _) = _setup(run)
    first = next_sample(samples, store, ana)
    assert next_sample(samples, store, ana) == first
    assert next_sample(samples, store, bo) != first or samples.target(samples.by_id[first]) == 2


def test_double_annotation_goes_to_two_different_annotators(run: RunDir) -> None:
    samples, store, (ana, bo, cy) = _setup(run, "review.double_fraction=1")
    cell_filter = QueueFilter(class_label="one")
    wanted = {e.sample_id for e in samples.entries if cell_filter.matches(e)}
    for annotator in (ana, bo):
        seen = set()
        while (sample_id := next_sample(samples, store, annotator, cell_filter)) is not None:
            assert sample_id not in seen
            seen.add(sample_id)
            _decide(store, annotator, sample_id)
        assert seen == wanted
    assert next_sample(samples, store, cy, cell_filter) is None


def test_double_fraction_picks_that_share(run: RunDir) -> None:
    samples = RunSamples(run, run_config(run, ["review.double_fraction=0.3"]))
    doubled = sum(samples.target(e) == 2 for e in samples.entries) / len(samples.entries)
    assert 0.15 < doubled < 0.45


def test_filters_restrict_what_is_served(run: RunDir) -> None:
    samples, store, (ana, _, _) = _setup(run)
    choice = samples.entries[0]
    only = QueueFilter(class_label=choice.class_label, prompt_style=choice.prompt_style,
                       question_type=choice.question_type)
    for _ in range(3):
        sample_id = next_sample(samples, store, ana, only)
        assert samples.by_id[sample_id].cell == choice.cell
        _decide(store, ana, sample_id)
    assert next_sample(samples, store, ana, QueueFilter(flag="no_such_flag")) is None
    unflagged = next_sample(samples, store, ana, QueueFilter(flag="no_flag"))
    assert not samples.by_id[unflagged].flags


def test_a_stale_claim_is_freed_for_others(run: RunDir) -> None:
    samples, store, (ana, bo, _) = _setup(run, "review.double_fraction=0", "review.claim_minutes=5")
    only = QueueFilter(class_label="one", prompt_style="concise", question_type="yes_no")
    wanted = [e.sample_id for e in samples.entries if only.matches(e)]
    held = [next_sample(samples, store, ana, only)]
    for sample_id in wanted:
        if sample_id not in held:
            _decide(store, bo, sample_id)
    assert next_sample(samples, store, bo, only) is None  # the last one is ana's
    with store.engine.begin() as conn:
        conn.execute(sa.update(claims).values(claimed_at="2000-01-01T00:00:00.000000Z"))
    assert next_sample(samples, store, bo, only) == held[0]


def test_losing_many_claim_races_is_not_an_empty_queue(run: RunDir, monkeypatch) -> None:
    samples, store, (ana, *_) = _setup(run)
    real_claim = store.try_claim
    lost = []

    def contended(sample_id, *args, **kwargs):
        if len(lost) < 20:  # other annotators win the first twenty races
            lost.append(sample_id)
            return False
        return real_claim(sample_id, *args, **kwargs)

    monkeypatch.setattr(store, "try_claim", contended)
    sample_id = next_sample(samples, store, ana)
    assert sample_id is not None and sample_id not in lost and len(lost) == 20
