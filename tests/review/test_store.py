"""The review database, on SQLite and (where it can be started) PostgreSQL."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from cotaforge.review.db import ReviewStore, claims, resolve_db_url
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
