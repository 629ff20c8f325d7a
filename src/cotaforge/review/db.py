"""The review database: annotators, sign-in sessions, claims on samples, decisions and edited revisions.

SQLite (WAL, every transaction `BEGIN IMMEDIATE`, so writers queue instead of failing) is the default, at
`<run>/review/review.sqlite`; a PostgreSQL URL serves a team. Every decision carries a `nonce` issued with
the page it was made on, unique in the table: a form sent twice is recorded once, and a decision is one
transaction, so concurrent annotators neither lose nor double-count one. Tokens and session ids are stored
only as sha256 hashes.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError

from cotaforge.config import RunConfig
from cotaforge.errors import ConfigError
from cotaforge.store import RunDir

ACTIONS = ("accept", "reject", "edit")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,79}")
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
revisions = sa.Table(
    "revisions", metadata,
    sa.Column("sample_id", sa.String(64), primary_key=True),
    sa.Column("revision", sa.Integer, primary_key=True),
    sa.Column("annotator_id", sa.Integer, sa.ForeignKey("annotators.id"), nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("fields", sa.Text, nullable=False, doc="JSON of the edited sample's text fields"),
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


@dataclass(frozen=True)
class Claim:
    sample_id: str
    slot: int
    annotator_id: int
    claimed_at: str
    done: bool


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
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
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
    def add_annotator(self, name: str, rotate: bool = False) -> str:
        """Create an annotator (or give an existing one a new token with `rotate`); return the token."""
        if not NAME_PATTERN.fullmatch(name):
            raise ValueError(f"annotator name {name!r}: use letters, digits and . _ @ + - (at most 80), e.g. 'ana'")
        token = secrets.token_urlsafe(32)

        def work(conn: sa.Connection) -> None:
            row = conn.execute(sa.select(annotators.c.id).where(annotators.c.name == name)).first()
            if row and not rotate:
                raise ValueError(f"annotator {name!r} exists; pass --rotate to replace the token")
            if row:
                conn.execute(annotators.update().where(annotators.c.id == row[0])
                             .values(token_hash=hash_secret(token)))
                conn.execute(sessions.delete().where(sessions.c.annotator_id == row[0]))
            else:
                conn.execute(annotators.insert().values(name=name, token_hash=hash_secret(token),
                                                        created_at=now_iso()))

        self._write(work)
        return token

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

    def annotator_for_token(self, token: str) -> Annotator | None:
        rows = self._read(sa.select(annotators.c.id, annotators.c.name)
                          .where(annotators.c.token_hash == hash_secret(token)))
        return Annotator(rows[0][0], rows[0][1]) if rows else None

    def annotator_names(self) -> dict[int, str]:
        return {row[0]: row[1] for row in self._read(sa.select(annotators.c.id, annotators.c.name))}

    # Sessions --------------------------------------------------------------------------------------
    def start_session(self, annotator_id: int, hours: int) -> str:
        session_id = secrets.token_urlsafe(32)

        def work(conn: sa.Connection) -> None:
            conn.execute(sessions.delete().where(sessions.c.expires_at < now_iso()))
            conn.execute(sessions.insert().values(id_hash=hash_secret(session_id), annotator_id=annotator_id,
                                                  created_at=now_iso(), expires_at=now_iso(hours * 3600.0)))

        self._write(work)
        return session_id

    def session_annotator(self, session_id: str) -> Annotator | None:
        rows = self._read(
            sa.select(annotators.c.id, annotators.c.name)
            .join(sessions, sessions.c.annotator_id == annotators.c.id)
            .where(sessions.c.id_hash == hash_secret(session_id), sessions.c.expires_at > now_iso()))
        return Annotator(rows[0][0], rows[0][1]) if rows else None

    def end_session(self, session_id: str) -> None:
        self._write(lambda conn: conn.execute(sessions.delete().where(sessions.c.id_hash == hash_secret(session_id))))

    # Claims ----------------------------------------------------------------------------------------
    def claims(self) -> list[Claim]:
        rows = self._read(sa.select(claims.c.sample_id, claims.c.slot, claims.c.annotator_id, claims.c.claimed_at,
                                    claims.c.done))
        return [Claim(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows]

    def try_claim(self, sample_id: str, annotator_id: int, target: int, stale_before: str) -> bool:
        """Reserve one of the sample's `target` slots for the annotator; False when they are all taken."""

        def work(conn: sa.Connection) -> bool:
            conn.execute(claims.delete().where(claims.c.done.is_(False), claims.c.claimed_at < stale_before))
            rows = conn.execute(sa.select(claims.c.slot, claims.c.annotator_id)
                                .where(claims.c.sample_id == sample_id)).all()
            if any(a == annotator_id for _, a in rows):
                return True
            if len(rows) >= target:
                return False
            used = {slot for slot, _ in rows}
            slot = min(s for s in range(target + len(rows) + 1) if s not in used)
            conn.execute(claims.insert().values(sample_id=sample_id, slot=slot, annotator_id=annotator_id,
                                                claimed_at=now_iso(), done=False))
            return True

        return self._write(work)

    # Decisions -------------------------------------------------------------------------------------
    def record_decision(self, *, nonce: str, sample_id: str, annotator_id: int, action: str, reason: str = "",
                        note: str = "", revision: int = 0, edit_fields: dict | None = None,
                        source: str = "app", created_at: str | None = None) -> tuple[bool, int]:
        """Store one decision (and, for an edit, its new revision) in one transaction.

        Returns (recorded, revision): recorded is False when this nonce was already stored, so a form
        sent twice counts once.
        """
        if action not in ACTIONS:
            raise ValueError(f"action {action!r}: use one of {', '.join(ACTIONS)}")
        if (action == "edit") != (edit_fields is not None):
            raise ValueError("an edit needs its edited fields, and only an edit has them")
        if not nonce or len(nonce) > 96:
            raise ValueError("a decision needs a nonce of 1 to 96 characters (the form's hidden field)")

        def work(conn: sa.Connection) -> tuple[bool, int]:
            existing = conn.execute(sa.select(decisions.c.revision).where(decisions.c.nonce == nonce)).first()
            if existing:
                return False, existing[0]
            at = created_at or now_iso()
            new_revision = revision
            if edit_fields is not None:
                latest = conn.execute(sa.select(sa.func.max(revisions.c.revision))
                                      .where(revisions.c.sample_id == sample_id)).scalar()
                new_revision = (latest or 0) + 1
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

    def decisions(self, sample_id: str | None = None) -> list[Decision]:
        """Every stored decision in the order it was made (of one sample, when given)."""
        statement = (sa.select(decisions, annotators.c.name)
                     .join(annotators, annotators.c.id == decisions.c.annotator_id)
                     .order_by(decisions.c.id))
        if sample_id is not None:
            statement = statement.where(decisions.c.sample_id == sample_id)
        return [Decision(id=r.id, nonce=r.nonce, sample_id=r.sample_id, annotator=r.name, action=r.action,
                         reason=r.reason, note=r.note, revision=r.revision, created_at=r.created_at,
                         source=r.source) for r in self._read(statement)]

    def revision_fields(self, sample_id: str | None = None) -> dict[tuple[str, int], dict]:
        """Edited fields by (sample id, revision)."""
        statement = sa.select(revisions.c.sample_id, revisions.c.revision, revisions.c.fields)
        if sample_id is not None:
            statement = statement.where(revisions.c.sample_id == sample_id)
        return {(r[0], r[1]): json.loads(r[2]) for r in self._read(statement)}


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
