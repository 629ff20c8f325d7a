"""The review database: annotators, sign-in sessions, claims on samples, decisions and edited revisions.

SQLite (WAL, every transaction `BEGIN IMMEDIATE`, so writers queue instead of failing) is the default, at
`<run>/review/review.sqlite`, created readable by its owner only (it holds the CSRF secret); a PostgreSQL
URL serves a team. Every decision carries a `nonce` issued with the page it was made on, unique in the
table: a form sent twice is recorded once, and a decision is one transaction, so concurrent annotators
neither lose nor double-count one. An edit names the revision it was built on and is refused
(`RevisionConflict`) when a newer one exists; the (sample, revision) primary key makes that check atomic on
SQLite and PostgreSQL alike. Tokens and session ids are stored only as sha256 hashes. Reading decisions for
publish lives in `cotaforge.decisions`, below this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError

from cotaforge.decisions import (ACTIONS, Decision, default_db_url, latest_decisions, resolve_db_url,
                                 select_decisions, select_revision_fields, sqlite_path, withdrawn_ids)
from cotaforge.errors import ConfigError

__all__ = ["ACTIONS", "Annotator", "Claim", "Decision", "ReviewStore", "RevisionConflict", "NotServed",
           "default_db_url", "resolve_db_url", "sqlite_path"]
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,79}")
EMAIL_PATTERN = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
_RETRIES = 8
T = TypeVar("T")

metadata = sa.MetaData()
annotators = sa.Table(
    "annotators", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(80), nullable=False, unique=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.String(32), nullable=False),
)
sessions = sa.Table(
    "sessions", metadata,
    sa.Column("id_hash", sa.String(64), primary_key=True),
    sa.Column("annotator_id", sa.Integer, sa.ForeignKey("annotators.id"), nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("expires_at", sa.String(32), nullable=False),
)
settings = sa.Table(
    "settings", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
# One row per (sample, annotator) that was served or decided; `slot` < the sample's target while the
# claim is live. The primary key makes taking a slot atomic on SQLite and PostgreSQL alike.
claims = sa.Table(
    "claims", metadata,
    sa.Column("sample_id", sa.String(64), primary_key=True),
    sa.Column("slot", sa.Integer, primary_key=True),
    sa.Column("annotator_id", sa.Integer, sa.ForeignKey("annotators.id"), nullable=False),
    sa.Column("claimed_at", sa.String(32), nullable=False),
    sa.Column("done", sa.Boolean, nullable=False, default=False),
    sa.UniqueConstraint("sample_id", "annotator_id", name="uq_claims_sample_annotator"),
)
decisions = sa.Table(
    "decisions", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("nonce", sa.String(96), nullable=False, unique=True),
    sa.Column("sample_id", sa.String(64), nullable=False, index=True),
    sa.Column("annotator_id", sa.Integer, sa.ForeignKey("annotators.id"), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(64), nullable=False, default=""),
    sa.Column("note", sa.Text, nullable=False, default=""),
    sa.Column("revision", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("source", sa.String(32), nullable=False, default="app"),
)
# An annotator's recent decisions (undo, the start page) without scanning the table.
decisions_by_annotator = sa.Index("ix_decisions_annotator_created", decisions.c.annotator_id, decisions.c.created_at)
revisions = sa.Table(
    "revisions", metadata,
    sa.Column("sample_id", sa.String(64), primary_key=True),
    sa.Column("revision", sa.Integer, primary_key=True),
    sa.Column("annotator_id", sa.Integer, sa.ForeignKey("annotators.id"), nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("fields", sa.Text, nullable=False, doc="JSON of the edited sample's text fields"),
)
# Samples an annotator skipped: the queue serves them to that annotator only when nothing else is left.
skips = sa.Table(
    "skips", metadata,
    sa.Column("sample_id", sa.String(64), primary_key=True),
    sa.Column("annotator_id", sa.Integer, sa.ForeignKey("annotators.id"), primary_key=True),
    sa.Column("skipped_at", sa.String(32), nullable=False),
)
# What an annotator is besides a token: a table of its own, so databases made before it gain it unchanged.
profiles = sa.Table(
    "profiles", metadata,
    sa.Column("annotator_id", sa.Integer, sa.ForeignKey("annotators.id"), primary_key=True),
    sa.Column("admin", sa.Boolean, nullable=False, default=False),
    sa.Column("email", sa.String(254), nullable=False, default=""),
    sa.Column("disabled_at", sa.String(32), nullable=False, default=""),
    sa.Column("last_seen_at", sa.String(32), nullable=False, default=""),
)


def now_iso(offset_s: float = 0.0) -> str:
    """UTC time as fixed-width ISO text, so string order is time order in every database."""
    moment = datetime.now(timezone.utc) + timedelta(seconds=offset_s)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def hash_secret(value: str) -> str:
    # Tokens and session ids are 256-bit random strings: a plain hash is enough, no slow KDF is needed.
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class Annotator:
    id: int
    name: str
    admin: bool = False


@dataclass(frozen=True)
class AnnotatorInfo:
    """One row of `review annotators`."""

    name: str
    admin: bool
    email: str
    disabled: bool
    decisions: int
    last_seen_at: str


@dataclass(frozen=True)
class Claim:
    sample_id: str
    slot: int
    annotator_id: int
    claimed_at: str
    done: bool


class RevisionConflict(Exception):
    """A decision names a revision that is no longer the newest live one; the message names the newest."""

    def __init__(self, sample_id: str, based_on: int, newest: int) -> None:
        super().__init__(f"sample {sample_id}: the decision was made on revision {based_on}, but revision {newest} "
                         "is the newest now")
        self.based_on, self.newest = based_on, newest


class NotServed(Exception):
    """The annotator tried to decide a sample that was neither served to them nor opened by them."""


class UnknownRevision(ValueError):
    """A decision named a revision of the sample that does not exist."""


class ReviewStore:
    """All reads and writes of the review database. Thread-safe: one engine, one connection per call."""

    def __init__(self, url: str) -> None:
        try:
            parsed = sa.engine.make_url(url)
        except sa.exc.ArgumentError as exc:
            raise ConfigError(f"review database URL {url!r} is not valid; use sqlite:///PATH or "
                              "postgresql://USER@HOST/DB") from exc
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            if not parsed.database or parsed.database == ":memory:":
                raise ConfigError("the review database must be a file (sqlite:///PATH) so every worker shares it")
            _private_sqlite_file(Path(parsed.database))
            self.engine = sa.create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30},
                                           pool_size=8, max_overflow=8)
            sa.event.listen(self.engine, "connect", _sqlite_on_connect)
            sa.event.listen(self.engine, "begin", _sqlite_on_begin)
        else:
            try:
                self.engine = sa.create_engine(parsed, pool_size=8, max_overflow=8, pool_pre_ping=True)
            except ModuleNotFoundError as exc:
                raise ConfigError(f"no driver for {parsed.get_backend_name()}: install cotaforge[postgres] "
                                  "(psycopg) to use PostgreSQL") from exc
        metadata.create_all(self.engine)
        decisions_by_annotator.create(self.engine, checkfirst=True)  # databases made before the index existed
        if self.is_sqlite:
            _private_sqlite_file(Path(parsed.database))  # the -wal and -shm files SQLite has made by now
        self._secret: bytes | None = None

    def close(self) -> None:
        self.engine.dispose()

    def _write(self, work: Callable[[sa.Connection], T]) -> T:
        """Run `work` in one transaction, retried when a concurrent writer got there first."""
        attempt = 0
        while True:
            try:
                with self.engine.begin() as conn:
                    return work(conn)
            except (IntegrityError, OperationalError):
                attempt += 1
                if attempt >= _RETRIES:
                    raise
                time.sleep(0.005 * attempt + secrets.randbelow(10) / 1000)

    def _read(self, statement: sa.Executable) -> list[sa.Row]:
        with self.engine.connect() as conn:
            return list(conn.execute(statement))

    # Settings --------------------------------------------------------------------------------------
    @property
    def secret(self) -> bytes:
        """The key that signs CSRF tokens, shared by every server process on this database."""
        if self._secret is None:
            def work(conn: sa.Connection) -> str:
                row = conn.execute(sa.select(settings.c.value).where(settings.c.key == "csrf_secret")).first()
                if row:
                    return row[0]
                value = secrets.token_hex(32)
                conn.execute(settings.insert().values(key="csrf_secret", value=value))
                return value

            self._secret = bytes.fromhex(self._write(work))
        return self._secret

    # Annotators ------------------------------------------------------------------------------------
    def add_annotator(self, name: str, rotate: bool = False, admin: bool | None = None,
                      email: str | None = None) -> str | None:
        """Create an annotator and return their token; `rotate` gives an existing one a new token (and
        re-enables a removed one). For an existing annotator without `rotate`, `admin` and `email` update
        the profile and None is returned. ValueError for a bad name or e-mail, or an existing name with
        nothing to change."""
        if not NAME_PATTERN.fullmatch(name):
            raise ValueError(f"annotator name {name!r}: use letters, digits and . _ @ + - (at most 80), e.g. 'ana'")
        if email is not None and email and not EMAIL_PATTERN.fullmatch(email):
            raise ValueError(f"e-mail {email!r} is not an address like ana@example.org")
        token = secrets.token_urlsafe(32)

        def work(conn: sa.Connection) -> None:
            row = conn.execute(sa.select(annotators.c.id).where(annotators.c.name == name)).first()
            if row and not rotate and admin is None and email is None:
                raise ValueError(f"annotator {name!r} exists; pass --rotate to replace the token")
            if row and rotate:
                conn.execute(annotators.update().where(annotators.c.id == row[0])
                             .values(token_hash=hash_secret(token)))
                conn.execute(sessions.delete().where(sessions.c.annotator_id == row[0]))
                _set_profile(conn, row[0], disabled_at="")
            elif not row:
                annotator_id = conn.execute(annotators.insert().values(
                    name=name, token_hash=hash_secret(token), created_at=now_iso())).inserted_primary_key[0]
                row = (annotator_id,)
            _set_profile(conn, row[0], **{k: v for k, v in (("admin", admin), ("email", email)) if v is not None})

        existed = bool(self._read(sa.select(annotators.c.id).where(annotators.c.name == name)))
        self._write(work)
        return token if (rotate or not existed) else None

    def ensure_annotator(self, name: str) -> int:
        """The id of `name`, created without a usable token when missing (for imported decisions)."""
        if not NAME_PATTERN.fullmatch(name):
            raise ValueError(f"annotator name {name!r} has characters cotaforge does not accept")

        def work(conn: sa.Connection) -> int:
            row = conn.execute(sa.select(annotators.c.id).where(annotators.c.name == name)).first()
            if row:
                return row[0]
            # A hash of 32 random bytes that no token maps to: the annotator cannot sign in.
            unusable = "!" + secrets.token_hex(31) + "x"
            return conn.execute(annotators.insert().values(name=name, token_hash=unusable, created_at=now_iso())
                                ).inserted_primary_key[0]

        return self._write(work)

    def _active(self, statement: sa.Select) -> Annotator | None:
        """The first annotator `statement` finds, unless they were removed."""
        statement = (statement.add_columns(profiles.c.admin, profiles.c.disabled_at)
                     .outerjoin(profiles, profiles.c.annotator_id == annotators.c.id))
        rows = self._read(statement)
        if not rows or (rows[0].disabled_at or ""):
            return None
        return Annotator(rows[0].id, rows[0].name, bool(rows[0].admin))

    def annotator_for_token(self, token: str) -> Annotator | None:
        return self._active(sa.select(annotators.c.id, annotators.c.name)
                            .where(annotators.c.token_hash == hash_secret(token)))

    def annotator_names(self) -> dict[int, str]:
        return {row[0]: row[1] for row in self._read(sa.select(annotators.c.id, annotators.c.name))}

    def annotators(self) -> list[AnnotatorInfo]:
        """Every annotator with their role, e-mail, whether removed, decisions stored and when last seen."""
        activity = {row[0]: (row[1], row[2]) for row in self._read(
            sa.select(decisions.c.annotator_id, sa.func.count(), sa.func.max(decisions.c.created_at))
            .group_by(decisions.c.annotator_id))}
        rows = self._read(sa.select(annotators.c.id, annotators.c.name, profiles.c.admin, profiles.c.email,
                                    profiles.c.disabled_at, profiles.c.last_seen_at)
                          .outerjoin(profiles, profiles.c.annotator_id == annotators.c.id)
                          .order_by(annotators.c.name))
        # Last seen: the later of their last sign-in and their last decision.
        return [AnnotatorInfo(r.name, bool(r.admin), r.email or "", bool(r.disabled_at), activity.get(r.id, (0, ""))[0],
                              max(r.last_seen_at or "", activity.get(r.id, (0, ""))[1] or "")) for r in rows]

    def remove_annotator(self, name: str) -> None:
        """Disable an annotator: no sign-in, sessions ended, undecided samples freed; decisions stay."""

        def work(conn: sa.Connection) -> None:
            row = conn.execute(sa.select(annotators.c.id).where(annotators.c.name == name)).first()
            if row is None:
                raise ValueError(f"no annotator named {name!r}; `cotaforge review annotators` lists them")
            conn.execute(sessions.delete().where(sessions.c.annotator_id == row[0]))
            conn.execute(claims.delete().where(claims.c.annotator_id == row[0], claims.c.done.is_(False)))
            _set_profile(conn, row[0], disabled_at=now_iso())

        self._write(work)

    def emails(self) -> dict[str, str]:
        """{annotator name: e-mail} for those that have one."""
        rows = self._read(sa.select(annotators.c.name, profiles.c.email)
                          .join(profiles, profiles.c.annotator_id == annotators.c.id).where(profiles.c.email != ""))
        return {r[0]: r[1] for r in rows}

    # Sessions --------------------------------------------------------------------------------------
    def start_session(self, annotator_id: int, hours: int) -> str:
        session_id = secrets.token_urlsafe(32)

        def work(conn: sa.Connection) -> None:
            conn.execute(sessions.delete().where(sessions.c.expires_at < now_iso()))
            conn.execute(sessions.insert().values(id_hash=hash_secret(session_id), annotator_id=annotator_id,
                                                  created_at=now_iso(), expires_at=now_iso(hours * 3600.0)))
            _set_profile(conn, annotator_id, last_seen_at=now_iso())

        self._write(work)
        return session_id

    def session_annotator(self, session_id: str) -> Annotator | None:
        return self._active(
            sa.select(annotators.c.id, annotators.c.name)
            .join(sessions, sessions.c.annotator_id == annotators.c.id)
            .where(sessions.c.id_hash == hash_secret(session_id), sessions.c.expires_at > now_iso()))

    def end_session(self, session_id: str) -> None:
        self._write(lambda conn: conn.execute(sessions.delete().where(sessions.c.id_hash == hash_secret(session_id))))

    def expire_sessions(self, annotator_id: int) -> None:
        """End every session of the annotator now (as if their sign-in had run out)."""
        self._write(lambda conn: conn.execute(sessions.update().where(sessions.c.annotator_id == annotator_id)
                                              .values(expires_at=now_iso(-1.0))))

    # Claims ----------------------------------------------------------------------------------------
    def claims(self) -> list[Claim]:
        rows = self._read(sa.select(claims.c.sample_id, claims.c.slot, claims.c.annotator_id, claims.c.claimed_at,
                                    claims.c.done))
        return [Claim(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows]

    def try_claim(self, sample_id: str, annotator_id: int, target: int, stale_before: str) -> bool:
        """Reserve one of the sample's `target` slots for the annotator; False when they are all taken.

        Only this sample's lapsed claims are freed, so an annotator whose claim lapsed keeps it (and may
        still decide) until someone else actually takes the sample.
        """

        def work(conn: sa.Connection) -> bool:
            conn.execute(claims.delete().where(claims.c.sample_id == sample_id, claims.c.done.is_(False),
                                               claims.c.claimed_at < stale_before,
                                               claims.c.annotator_id != annotator_id))
            rows = conn.execute(sa.select(claims.c.slot, claims.c.annotator_id)
                                .where(claims.c.sample_id == sample_id)).all()
            if any(a == annotator_id for _, a in rows):
                conn.execute(claims.update().where(claims.c.sample_id == sample_id, claims.c.annotator_id == annotator_id,
                                                   claims.c.done.is_(False)).values(claimed_at=now_iso()))
                return True
            if len(rows) >= target:
                return False
            used = {slot for slot, _ in rows}
            slot = min(s for s in range(target + len(rows) + 1) if s not in used)
            conn.execute(claims.insert().values(sample_id=sample_id, slot=slot, annotator_id=annotator_id,
                                                claimed_at=now_iso(), done=False))
            return True

        return self._write(work)

    def open_sample(self, sample_id: str, annotator_id: int) -> None:
        """Reserve a sample the annotator chose (from search or the queue pages), beyond its planned slots:
        a third opinion for adjudication is allowed."""

        def work(conn: sa.Connection) -> None:
            rows = conn.execute(sa.select(claims.c.slot, claims.c.annotator_id)
                                .where(claims.c.sample_id == sample_id)).all()
            if any(a == annotator_id for _, a in rows):
                return
            top = max((slot for slot, _ in rows), default=-1)
            conn.execute(claims.insert().values(sample_id=sample_id, slot=top + 1, annotator_id=annotator_id,
                                                claimed_at=now_iso(), done=False))

        self._write(work)

    def is_served(self, sample_id: str, annotator_id: int) -> bool:
        """Whether the sample was served to (or opened by) the annotator and may be decided by them."""
        return bool(self._read(sa.select(claims.c.slot).where(claims.c.sample_id == sample_id,
                                                              claims.c.annotator_id == annotator_id)))

    def skip(self, sample_id: str, annotator_id: int) -> None:
        """Give an undecided sample back to the queue for others; the annotator gets it again only last."""

        def work(conn: sa.Connection) -> None:
            conn.execute(claims.delete().where(claims.c.sample_id == sample_id, claims.c.annotator_id == annotator_id,
                                               claims.c.done.is_(False)))
            conn.execute(skips.delete().where(skips.c.sample_id == sample_id, skips.c.annotator_id == annotator_id))
            conn.execute(skips.insert().values(sample_id=sample_id, annotator_id=annotator_id, skipped_at=now_iso()))

        self._write(work)

    def skipped(self, annotator_id: int) -> set[str]:
        return {r[0] for r in self._read(sa.select(skips.c.sample_id).where(skips.c.annotator_id == annotator_id))}

    # Decisions -------------------------------------------------------------------------------------
    def record_decision(self, *, nonce: str, sample_id: str, annotator_id: int, action: str, reason: str = "",
                        note: str = "", revision: int = 0, edit_fields: dict | None = None,
                        source: str = "app", created_at: str | None = None,
                        require_served: bool = False) -> tuple[bool, int]:
        """Store one decision (and, for an edit, its new revision) in one transaction.

        `revision` is the revision the decision was made on; for an edit, the one it was built on.
        Returns (recorded, revision): recorded is False when this nonce was already stored, so a form
        sent twice counts once; revision is the decided (or newly created) one. Raises UnknownRevision
        when `revision` does not exist, RevisionConflict when an edit's base is no longer the newest
        revision (or the decided revision was withdrawn by an undo), and NotServed (with `require_served`) when the sample was not served to the annotator.
        """
        if action not in ACTIONS or action == "undo":
            raise ValueError(f"action {action!r}: use one of accept, reject, edit (undo has its own call)")
        if (action == "edit") != (edit_fields is not None):
            raise ValueError("an edit needs its edited fields, and only an edit has them")
        if not nonce or len(nonce) > 96:
            raise ValueError("a decision needs a nonce of 1 to 96 characters (the form's hidden field)")

        def work(conn: sa.Connection) -> tuple[bool, int]:
            existing = conn.execute(sa.select(decisions.c.revision).where(decisions.c.nonce == nonce)).first()
            if existing:
                return False, existing[0]
            if require_served and not conn.execute(sa.select(claims.c.slot).where(
                    claims.c.sample_id == sample_id, claims.c.annotator_id == annotator_id)).first():
                raise NotServed(f"sample {sample_id} was not served to you; open it from the queue or search first")
            revisions_held: set[int] = set()
            if revision != 0 or edit_fields is not None:  # most decisions are on the original: no lookup
                revisions_held = {r[0] for r in conn.execute(sa.select(revisions.c.revision)
                                                            .where(revisions.c.sample_id == sample_id))}
            if revision != 0 and revision not in revisions_held:
                raise UnknownRevision(f"sample {sample_id} has no revision {revision} (it has "
                                      f"{', '.join(map(str, [0, *sorted(revisions_held)]))}); reload the sample page")
            at = created_at or now_iso()
            new_revision = revision
            if edit_fields is None and revision != 0:
                # Accepting or rejecting a revision whose edit was withdrawn would endorse text nobody proposes.
                newest = _newest_live_revision(select_decisions(conn, sample_id), sorted(revisions_held))
                if revision > newest:
                    raise RevisionConflict(sample_id, revision, newest)
            if edit_fields is not None:
                newest = _newest_live_revision(select_decisions(conn, sample_id), sorted(revisions_held))
                if revision != newest:
                    raise RevisionConflict(sample_id, revision, newest)
                # The primary key (sample, revision) refuses a second writer of the same number; the retry
                # then sees the newer revision and reports the conflict.
                new_revision = max(revisions_held, default=0) + 1
                conn.execute(revisions.insert().values(
                    sample_id=sample_id, revision=new_revision, annotator_id=annotator_id, created_at=at,
                    fields=json.dumps(edit_fields, sort_keys=True, ensure_ascii=False)))
            conn.execute(decisions.insert().values(
                nonce=nonce, sample_id=sample_id, annotator_id=annotator_id, action=action, reason=reason,
                note=note, revision=new_revision, created_at=at, source=source))
            updated = conn.execute(claims.update().where(claims.c.sample_id == sample_id,
                                                         claims.c.annotator_id == annotator_id)
                                   .values(done=True)).rowcount
            if not updated:
                top = conn.execute(sa.select(sa.func.max(claims.c.slot)).where(claims.c.sample_id == sample_id)).scalar()
                conn.execute(claims.insert().values(sample_id=sample_id, slot=0 if top is None else top + 1,
                                                    annotator_id=annotator_id, claimed_at=at, done=True))
            return True, new_revision

        return self._write(work)

    def undo_last(self, *, nonce: str, annotator_id: int, window_s: float) -> Decision | None:
        """Withdraw the annotator's latest effective decision if made within `window_s` seconds.

        Recorded as an `undo` decision (nothing is deleted); the sample goes back to the annotator
        undecided. Returns the withdrawn decision, or None when there is none young enough. A form sent
        twice (same nonce) undoes once.
        """
        if not nonce or len(nonce) > 96:
            raise ValueError("an undo needs a nonce of 1 to 96 characters (the form's hidden field)")

        def work(conn: sa.Connection) -> Decision | None:
            if conn.execute(sa.select(decisions.c.id).where(decisions.c.nonce == nonce)).first():
                return None
            target = _undoable(select_decisions(conn, annotator_id=annotator_id, since=now_iso(-window_s)))
            if target is None:
                return None
            conn.execute(decisions.insert().values(
                nonce=nonce, sample_id=target.sample_id, annotator_id=annotator_id, action="undo", reason="",
                note=f"withdraws decision {target.id}", revision=target.revision, created_at=now_iso(), source="app"))
            reopened = conn.execute(claims.update().where(claims.c.sample_id == target.sample_id,
                                                          claims.c.annotator_id == annotator_id)
                                    .values(done=False, claimed_at=now_iso())).rowcount
            if not reopened:
                top = conn.execute(sa.select(sa.func.max(claims.c.slot))
                                   .where(claims.c.sample_id == target.sample_id)).scalar()
                conn.execute(claims.insert().values(sample_id=target.sample_id, slot=0 if top is None else top + 1,
                                                    annotator_id=annotator_id, claimed_at=now_iso(), done=False))
            return target

        return self._write(work)

    def undoable(self, annotator_id: int, window_s: float) -> Decision | None:
        """The decision `undo_last` would withdraw now, or None."""
        with self.engine.connect() as conn:
            return _undoable(select_decisions(conn, annotator_id=annotator_id, since=now_iso(-window_s)))

    def decisions(self, sample_id: str | None = None) -> list[Decision]:
        """Every stored decision in the order it was made (of one sample, when given)."""
        with self.engine.connect() as conn:
            return select_decisions(conn, sample_id)

    def revision_fields(self, sample_id: str | None = None) -> dict[tuple[str, int], dict]:
        """Edited fields by (sample id, revision)."""
        with self.engine.connect() as conn:
            return select_revision_fields(conn, sample_id)

    def current_revision(self, sample_id: str) -> tuple[int, dict | None]:
        """The revision reviewers see now (the newest not withdrawn by an undo) and its fields (None for 0)."""
        _, newest, fields = self.sample_history(sample_id)
        return newest, fields

    def sample_history(self, sample_id: str) -> tuple[list[Decision], int, dict | None]:
        """The sample's decisions in the order made, its current revision and that revision's fields."""
        with self.engine.connect() as conn:
            history = select_decisions(conn, sample_id)
            fields = select_revision_fields(conn, sample_id)
        newest = _newest_live_revision(history, [rev for _, rev in fields])
        return history, newest, fields[(sample_id, newest)] if newest else None


def _set_profile(conn: sa.Connection, annotator_id: int, **values: object) -> None:
    """Update the annotator's profile row, creating it (with defaults) when the annotator has none yet."""
    exists = conn.execute(sa.select(profiles.c.annotator_id).where(profiles.c.annotator_id == annotator_id)).first()
    if exists:
        if values:
            conn.execute(profiles.update().where(profiles.c.annotator_id == annotator_id).values(**values))
        return
    conn.execute(profiles.insert().values(**{"admin": False, "email": "", "disabled_at": "", "last_seen_at": "",
                                             **values, "annotator_id": annotator_id}))


def _undoable(mine: list[Decision]) -> Decision | None:
    """An annotator's newest decision still in effect, from their decisions in the order made.

    Reading only the decisions of the undo window is exact for a target inside it: an undo withdraws the
    newest decision in effect on its sample, which is never older than a decision of the window it follows.
    """
    in_effect = [d for by_annotator in latest_decisions(mine).values() for d in by_annotator.values()]
    return max(in_effect, key=lambda d: d.id, default=None)


def _newest_live_revision(history: list[Decision], held: list[int]) -> int:
    """The newest of a sample's revisions `held` whose edit was not withdrawn by an undo (0: the original)."""
    withdrawn = withdrawn_ids(history)
    dropped = {d.revision for d in history if d.action == "edit" and d.id in withdrawn}
    return max((r for r in held if r not in dropped), default=0)


def _private_sqlite_file(path: Path) -> None:
    """Make the database file (and its -wal and -shm companions) readable by its owner only.

    It holds the CSRF secret and hashed tokens. SQLite gives the companions the main file's mode; files of
    an older database are tightened too.
    """
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    for candidate in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if candidate.exists() and candidate.stat().st_mode & 0o077:
            os.chmod(candidate, 0o600)


def _sqlite_on_connect(dbapi_connection, _record) -> None:
    # The driver's own transaction handling is turned off so `_sqlite_on_begin` can take the write
    # lock up front: a deferred transaction that later writes fails under WAL instead of waiting.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_on_begin(conn: sa.Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")
