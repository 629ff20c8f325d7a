"""The review database, on SQLite and (where it can be started) PostgreSQL."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from cotaforge.review.db import ReviewStore, RevisionConflict, claims, resolve_db_url
from cotaforge.review.queue import next_sample
from cotaforge.review.samples import RunSamples
from cotaforge.store import RunDir

from .factories import run_config


def test_tokens_are_stored_hashed(db_url: str) -> None:
    store = ReviewStore(db_url)
    token = store.add_annotator("ana")
    assert store.annotator_for_token(token).name == "ana"
    assert store.annotator_for_token(token + "x") is None
    with store.engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT token_hash FROM annotators")).scalar()
    assert stored == hashlib.sha256(token.encode()).hexdigest() and token not in stored
    with pytest.raises(ValueError, match="--rotate"):
        store.add_annotator("ana")
    rotated = store.add_annotator("ana", rotate=True)
    assert store.annotator_for_token(token) is None and store.annotator_for_token(rotated).name == "ana"
    with pytest.raises(ValueError, match="annotator name"):
        store.add_annotator("<b>x</b>")
    store.close()


def test_sqlite_file_never_holds_the_token(tmp_path: Path) -> None:
    store = ReviewStore(f"sqlite:///{tmp_path / 'r.sqlite'}")
    token = store.add_annotator("ana")
    session = store.start_session(store.annotator_for_token(token).id, hours=1)
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("r.sqlite*"))
    assert token.encode() not in raw and session.encode() not in raw


def test_sessions_sign_in_and_out(db_url: str) -> None:
    store = ReviewStore(db_url)
    annotator = store.annotator_for_token(store.add_annotator("ana"))
    session = store.start_session(annotator.id, hours=1)
    assert store.session_annotator(session) == annotator
    store.end_session(session)
    assert store.session_annotator(session) is None
    store.close()


def test_a_nonce_is_recorded_once(db_url: str) -> None:
    store = ReviewStore(db_url)
    annotator = store.annotator_for_token(store.add_annotator("ana"))
    first = store.record_decision(nonce="n" * 24, sample_id="abc12345", annotator_id=annotator.id, action="accept")
    again = store.record_decision(nonce="n" * 24, sample_id="abc12345", annotator_id=annotator.id, action="reject",
                                  reason="other")
    assert first == (True, 0) and again == (False, 0)
    assert [d.action for d in store.decisions()] == ["accept"]
    edit = store.record_decision(nonce="e" * 24, sample_id="abc12345", annotator_id=annotator.id, action="edit",
                                 edit_fields={"question": "q?"})
    assert edit == (True, 1)
    assert store.revision_fields() == {("abc12345", 1): {"question": "q?"}}
    with pytest.raises(ValueError, match="action"):
        store.record_decision(nonce="x" * 24, sample_id="abc12345", annotator_id=annotator.id, action="maybe")
    store.close()


def test_concurrent_annotators_lose_and_double_nothing(run: RunDir, db_url: str) -> None:
    """Eight threads, each an annotator taking and deciding samples through the store at once."""
    samples = RunSamples(run, run_config(run, ["review.double_fraction=0.5"]))
    store = ReviewStore(db_url)
    ids = [store.annotator_for_token(store.add_annotator(f"a{i}")).id for i in range(8)]
    per_annotator = 12

    def work(annotator_id: int) -> list[str]:
        done = []
        for i in range(per_annotator):
            sample_id = next_sample(samples, store, annotator_id)
            assert sample_id is not None
            store.record_decision(nonce=f"{annotator_id}-{i}-{sample_id}", sample_id=sample_id,
                                  annotator_id=annotator_id, action="accept" if i % 3 else "reject",
                                  reason="" if i % 3 else "other")
            done.append(sample_id)
        return done

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, ids))
    decisions = store.decisions()
    assert len(decisions) == 8 * per_annotator
    assert len({(d.sample_id, d.annotator) for d in decisions}) == 8 * per_annotator
    assert all(len(set(done)) == per_annotator for done in results)
    per_sample: dict[str, int] = {}
    for d in decisions:
        per_sample[d.sample_id] = per_sample.get(d.sample_id, 0) + 1
    assert all(count <= samples.target(samples.by_id[sid]) for sid, count in per_sample.items())
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(claims).where(claims.c.done.is_(False))).scalar() == 0
    store.close()


def test_database_url_resolution(run: RunDir) -> None:
    cfg = run_config(run)
    assert resolve_db_url(run, cfg) == f"sqlite:///{(run.root / 'review' / 'review.sqlite').resolve()}"
    assert resolve_db_url(run, cfg, "postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert resolve_db_url(run, run_config(run, ["review.db_url=sqlite:////x/y.sqlite"])) == "sqlite:////x/y.sqlite"


def _two_annotators(store: ReviewStore) -> tuple[int, int]:
    return (store.annotator_for_token(store.add_annotator("ana")).id,
            store.annotator_for_token(store.add_annotator("bo")).id)


def test_an_edit_on_an_outdated_revision_is_a_conflict(db_url: str) -> None:
    from cotaforge.review.db import RevisionConflict, UnknownRevision

    store = ReviewStore(db_url)
    ana, bo = _two_annotators(store)
    store.record_decision(nonce="e1" * 12, sample_id="s1" * 5, annotator_id=ana, action="edit", revision=0,
                          edit_fields={"reasoning": "ana's"})
    with pytest.raises(RevisionConflict) as conflict:
        store.record_decision(nonce="e2" * 12, sample_id="s1" * 5, annotator_id=bo, action="edit", revision=0,
                              edit_fields={"reasoning": "bo's"})
    assert (conflict.value.based_on, conflict.value.newest) == (0, 1)
    # Built on the newest revision, the same edit is saved.
    assert store.record_decision(nonce="e3" * 12, sample_id="s1" * 5, annotator_id=bo, action="edit", revision=1,
                                 edit_fields={"reasoning": "bo's"}) == (True, 2)
    with pytest.raises(UnknownRevision, match="no revision 99"):
        store.record_decision(nonce="e4" * 12, sample_id="s1" * 5, annotator_id=bo, action="accept", revision=99)
    assert [(d.annotator, d.revision) for d in store.decisions()] == [("ana", 1), ("bo", 2)]
    store.close()


def test_simultaneous_edits_of_one_revision_save_exactly_one(db_url: str) -> None:
    """Sixteen writers, one base revision, at once: one revision is made, fifteen conflicts, on both databases."""
    from cotaforge.review.db import RevisionConflict

    store = ReviewStore(db_url)
    ids = [store.annotator_for_token(store.add_annotator(f"a{i}")).id for i in range(16)]

    def edit(annotator_id: int) -> str:
        try:
            store.record_decision(nonce=f"race-{annotator_id:04d}" + "x" * 16, sample_id="race" * 3,
                                  annotator_id=annotator_id, action="edit", revision=0,
                                  edit_fields={"reasoning": f"by {annotator_id}"})
            return "saved"
        except RevisionConflict:
            return "conflict"

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(edit, ids))
    assert sorted(results) == ["conflict"] * 15 + ["saved"]
    assert list(store.revision_fields()) == [("race" * 3, 1)] and len(store.decisions()) == 1
    store.close()


def test_deciding_needs_a_claim_when_asked(db_url: str) -> None:
    from cotaforge.review.db import NotServed

    store = ReviewStore(db_url)
    ana, bo = _two_annotators(store)
    assert store.try_claim("s2" * 5, ana, target=1, stale_before="0")
    with pytest.raises(NotServed):
        store.record_decision(nonce="n1" * 12, sample_id="s2" * 5, annotator_id=bo, action="reject",
                              reason="other", require_served=True)
    store.record_decision(nonce="n2" * 12, sample_id="s2" * 5, annotator_id=ana, action="accept", require_served=True)
    store.open_sample("s2" * 5, bo)  # beyond the planned slot: a further opinion
    store.record_decision(nonce="n3" * 12, sample_id="s2" * 5, annotator_id=bo, action="reject", reason="other",
                          require_served=True)
    assert [(d.annotator, d.action) for d in store.decisions()] == [("ana", "accept"), ("bo", "reject")]
    store.close()


def test_undo_is_a_new_decision_that_withdraws_the_last_one(db_url: str) -> None:
    from cotaforge.decisions import latest_decisions

    store = ReviewStore(db_url)
    ana, bo = _two_annotators(store)
    store.record_decision(nonce="u1" * 12, sample_id="s3" * 5, annotator_id=ana, action="accept")
    store.record_decision(nonce="u2" * 12, sample_id="s4" * 5, annotator_id=ana, action="edit", revision=0,
                          edit_fields={"reasoning": "ana's"})
    store.record_decision(nonce="u3" * 12, sample_id="s4" * 5, annotator_id=bo, action="accept", revision=1)
    assert store.current_revision("s4" * 5)[0] == 1
    undone = store.undo_last(nonce="u4" * 12, annotator_id=ana, window_s=600)
    assert (undone.sample_id, undone.action) == ("s4" * 5, "edit")
    assert store.undo_last(nonce="u4" * 12, annotator_id=ana, window_s=600) is None  # the same form twice
    assert [d.action for d in store.decisions()] == ["accept", "edit", "accept", "undo"]  # nothing deleted
    latest = latest_decisions(store.decisions())
    assert "ana" not in latest["s4" * 5] and latest["s3" * 5]["ana"].action == "accept"
    assert store.current_revision("s4" * 5) == (0, None)  # the withdrawn edit is no longer what others see
    # bo's accept named revision 1: the sample stays, but the withdrawn text is not what gets published.
    from cotaforge.decisions import review_outcomes

    outcome = review_outcomes(store.decisions(), store.revision_fields()).outcomes["s4" * 5]
    assert outcome.keep and outcome.revision == 0 and outcome.fields is None
    # And nobody can decide on the withdrawn revision any more.
    with pytest.raises(RevisionConflict):
        store.record_decision(nonce="u8" * 12, sample_id="s4" * 5, annotator_id=bo, action="accept", revision=1)
    assert not next(c for c in store.claims() if c.sample_id == "s4" * 5 and c.annotator_id == ana).done
    # The next undo reaches the decision before; nothing is too old to undo only within the window.
    assert store.undo_last(nonce="u5" * 12, annotator_id=ana, window_s=0) is None
    assert store.undo_last(nonce="u6" * 12, annotator_id=ana, window_s=600).sample_id == "s3" * 5
    assert store.undo_last(nonce="u7" * 12, annotator_id=ana, window_s=600) is None
    store.close()


def test_removed_annotators_cannot_sign_in_and_keep_their_decisions(db_url: str) -> None:
    store = ReviewStore(db_url)
    token = store.add_annotator("ana", email="ana@example.org")
    assert store.add_annotator("bo", admin=True) is not None
    ana = store.annotator_for_token(token)
    session = store.start_session(ana.id, hours=1)
    store.record_decision(nonce="r1" * 12, sample_id="s5" * 5, annotator_id=ana.id, action="accept")
    store.remove_annotator("ana")
    assert store.annotator_for_token(token) is None and store.session_annotator(session) is None
    rows = {a.name: a for a in store.annotators()}
    assert rows["ana"].disabled and rows["ana"].decisions == 1 and rows["ana"].email == "ana@example.org"
    assert rows["ana"].last_seen_at and rows["bo"].admin and not rows["bo"].disabled
    assert [d.annotator for d in store.decisions()] == ["ana"]
    with pytest.raises(ValueError, match="no annotator named"):
        store.remove_annotator("cy")
    # Updating a profile issues no token; rotating re-enables with a new one.
    assert store.add_annotator("bo", email="bo@example.org") is None
    assert store.emails() == {"ana": "ana@example.org", "bo": "bo@example.org"}
    again = store.add_annotator("ana", rotate=True)
    assert store.annotator_for_token(again).name == "ana"
    with pytest.raises(ValueError, match="e-mail"):
        store.add_annotator("cy", email="not an address")
    store.close()


def test_the_sqlite_file_is_private(tmp_path: Path) -> None:
    import os
    import stat

    old_umask = os.umask(0o022)
    try:
        store = ReviewStore(f"sqlite:///{tmp_path / 'review' / 'review.sqlite'}")
        store.add_annotator("ana")
        _ = store.secret
        files = sorted((tmp_path / "review").glob("review.sqlite*"))
        assert {f.name for f in files} >= {"review.sqlite", "review.sqlite-wal", "review.sqlite-shm"}
        assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files), [oct(f.stat().st_mode) for f in files]
        assert stat.S_IMODE((tmp_path / "review").stat().st_mode) == 0o700  # a folder it made itself
        store.close()
        # A database made world-readable before is tightened when opened.
        (tmp_path / "review" / "review.sqlite").chmod(0o644)
        ReviewStore(f"sqlite:///{tmp_path / 'review' / 'review.sqlite'}").close()
        assert stat.S_IMODE((tmp_path / "review" / "review.sqlite").stat().st_mode) == 0o600
    finally:
        os.umask(old_umask)
