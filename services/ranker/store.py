"""Match storage behind one interface: SQLite (embedded default, WAL) and PostgreSQL (shared by
several ranker replicas). Both commit durably before ``record`` returns. No gRPC here.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlparse

import numpy as np

from services.common import tracing
from services.common.errors import ConfigError, Unavailable, quote
from services.ranker.adoption import Reading
from services.ranker.errors import IdempotencyConflict

OUTCOMES = (1, 2, 3)  # A_WINS, B_WINS, TIE (the proto's values)
#: Tasks under this prefix are mechanism checks (random or project-built weights): they are stored and shown
#: on their own leaderboard when named, and never reach a real task's table or a times-matched count.
MECHANISM_PREFIX = "mechanism."


def is_mechanism(task: str) -> bool:
    return task.startswith(MECHANISM_PREFIX)


#: Tasks under this prefix hold per-image outcomes of registered deployments measured on a user's eval set
#: ("eval.<set>.<digest prefix>"): they feed only their own leaderboard, named, never a catalog score.
EVAL_PREFIX = "eval."


def is_eval(task: str) -> bool:
    return task.startswith(EVAL_PREFIX)


@dataclass(frozen=True)
class Match:
    model_a: str
    model_b: str
    outcome: int
    task: str
    evidence: str
    idempotency_key: str

    def fingerprint(self) -> str:
        """Hash of everything but the key: a retry must carry the same match."""
        doc = json.dumps([self.model_a, self.model_b, self.outcome, self.task, self.evidence])
        return hashlib.sha256(doc.encode()).hexdigest()


@dataclass(frozen=True)
class MatchTable:
    """All matches of a task as parallel arrays (model ids as strings)."""

    model_a: list[str]
    model_b: list[str]
    outcome: np.ndarray


class MatchStore(Protocol):
    def record(self, match: Match) -> tuple[int, bool]:
        """Durably store ``match``; returns (match id, duplicate). Raises IdempotencyConflict."""

    def table(self, task: str = "") -> MatchTable:
        """Matches of ``task`` ('' = every catalog task: neither mechanism.* nor eval.*)."""

    def register_deployment(self, deployment_id: str, identity: str) -> bool | None:
        """Record a deployment id (True: known with this identity; None: known with another)."""

    def is_deployment(self, deployment_id: str) -> bool:
        """Whether ``deployment_id`` was registered."""

    def times_matched(self, task: str = "") -> dict[str, int]:
        """Matches per model id under ``task`` ('' = every non-mechanism, non-eval task)."""

    def version(self) -> tuple[int, int]:
        """(largest match id, number of matches): changes whenever a match is recorded."""

    def record_readings(self, readings: list[Reading]) -> None:
        """Keep each hub figure as the latest reading of its (model, figure), with its URL and time."""

    def adoption_readings(self, model_ids: list[str]) -> list[Reading]:
        """The latest stored reading of each figure of ``model_ids``."""

    def record_attestation(self, model_id: str, digest: str, fingerprint: str) -> tuple[str, float, bool]:
        """Store the first attestation of (model, digest); returns the stored (fingerprint, time, created)."""

    def attestation(self, model_id: str, digest: str) -> tuple[str, float] | None:
        """The stored (fingerprint, time) of (model, digest), or None."""

    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS matches (
    id {id_type},
    idempotency_key TEXT NOT NULL UNIQUE,
    fingerprint TEXT NOT NULL,
    model_a TEXT NOT NULL,
    model_b TEXT NOT NULL,
    outcome INTEGER NOT NULL CHECK (outcome IN (1, 2, 3)),
    task TEXT NOT NULL,
    evidence TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
)
"""
_INDEX = "CREATE INDEX IF NOT EXISTS matches_task ON matches (task)"
_DEPLOYMENTS = """
CREATE TABLE IF NOT EXISTS deployments (
    id TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
)
"""
#: The latest hub reading per (model, figure): what Score shows with its age when the hub cannot be read.
_ADOPTION = """
CREATE TABLE IF NOT EXISTS adoption_readings (
    model_id TEXT NOT NULL,
    name TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    url TEXT NOT NULL,
    read_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (model_id, name)
)
"""
#: Weights an operator attested, with the known-answer fingerprint of the first attested run (first one wins).
_ATTESTATIONS = """
CREATE TABLE IF NOT EXISTS attestations (
    model_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    recorded_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (model_id, digest)
)
"""
_COLUMNS = "idempotency_key, fingerprint, model_a, model_b, outcome, task, evidence, created_at"


def _row(match: Match) -> tuple:
    return (match.idempotency_key, match.fingerprint(), match.model_a, match.model_b, match.outcome, match.task,
            match.evidence, time.time())


def _resolve_duplicate(match: Match, existing: tuple[int, str] | None) -> tuple[int, bool]:
    if existing is None:
        raise Unavailable("match store lost a row it just reported as present; retry")
    match_id, fingerprint = existing
    if fingerprint != match.fingerprint():
        raise IdempotencyConflict(f"idempotency key {quote(match.idempotency_key)} was already used for a "
                                  "different match")
    return int(match_id), True


def _table(rows: list[tuple]) -> MatchTable:
    return MatchTable([r[0] for r in rows], [r[1] for r in rows], np.array([r[2] for r in rows], dtype=int))


class _SqlStore:
    """The SQL shared by both stores; subclasses supply the connection, the placeholder and errors."""

    placeholder = "?"
    #: Exceptions that mean the database is unreachable or failing (→ UNAVAILABLE), and its name.
    _unavailable: tuple[type[BaseException], ...] = ()
    _label = "database"
    _system = "other_sql"  # OpenTelemetry's db.system.name

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._db = None  # set by the subclass: a DB-API connection with .execute()

    def _execute(self, sql: str, args: tuple = ()):
        try:
            return self._db.execute(sql, args)
        except self._unavailable as exc:  # locked, disk full, I/O error, connection lost
            raise Unavailable(f"{self._label} store failed: {exc}") from exc

    def _sql(self, sql: str) -> str:
        return sql.replace("?", self.placeholder)

    def record(self, match: Match) -> tuple[int, bool]:
        with self._lock, tracing.span("INSERT matches", **{"db.system.name": self._system,
                                                           "db.operation.name": "INSERT",
                                                           "db.collection.name": "matches"}) as span:
            row = self._execute(self._sql(
                f"INSERT INTO matches ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (idempotency_key) DO NOTHING RETURNING id"), _row(match)).fetchone()
            tracing.annotate(span, duplicate=row is None)
            if row is not None:
                return int(row[0]), False
            existing = self._execute(self._sql("SELECT id, fingerprint FROM matches WHERE idempotency_key = ?"),
                                     (match.idempotency_key,)).fetchone()
        return _resolve_duplicate(match, existing)

    def _where(self, task: str) -> tuple[str, tuple]:
        """The task filter: one task, or every catalog task (outside the mechanism and eval prefixes)."""
        if task:
            return self._sql("WHERE task = ?"), (task,)
        return self._sql("WHERE substr(task, 1, ?) <> ? AND substr(task, 1, ?) <> ?"), (
            len(MECHANISM_PREFIX), MECHANISM_PREFIX, len(EVAL_PREFIX), EVAL_PREFIX)

    def register_deployment(self, deployment_id: str, identity: str) -> bool | None:
        """True when already registered with this identity, False when new, None when registered with
        another identity."""
        with self._lock:
            row = self._execute(self._sql(
                "INSERT INTO deployments (id, identity, created_at) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING "
                "RETURNING id"), (deployment_id, identity, time.time())).fetchone()
            if row is not None:
                return False
            existing = self._execute(self._sql("SELECT identity FROM deployments WHERE id = ?"),
                                     (deployment_id,)).fetchone()
        return True if existing is not None and existing[0] == identity else None

    def is_deployment(self, deployment_id: str) -> bool:
        with self._lock:
            return self._execute(self._sql("SELECT 1 FROM deployments WHERE id = ?"),
                                 (deployment_id,)).fetchone() is not None

    def table(self, task: str = "") -> MatchTable:
        where, args = self._where(task)
        with self._lock:
            rows = self._execute(f"SELECT model_a, model_b, outcome FROM matches {where} ORDER BY id", args).fetchall()
        return _table(rows)

    def version(self) -> tuple[int, int]:
        with self._lock:
            last, count = self._execute("SELECT COALESCE(MAX(id), 0), COUNT(*) FROM matches").fetchone()
        return int(last), int(count)

    def times_matched(self, task: str = "") -> dict[str, int]:
        where, args = self._where(task)
        with self._lock:
            rows = self._execute(
                f"SELECT m, COUNT(*) FROM (SELECT model_a AS m FROM matches {where} UNION ALL "
                f"SELECT model_b FROM matches {where}) t GROUP BY m", args + args).fetchall()
        return {m: int(c) for m, c in rows}

    def record_readings(self, readings: list[Reading]) -> None:
        with self._lock:
            for r in readings:
                self._execute(self._sql(
                    "INSERT INTO adoption_readings (model_id, name, value, url, read_at) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (model_id, name) DO UPDATE SET value = excluded.value, url = excluded.url, "
                    "read_at = excluded.read_at"), (r.model_id, r.name, r.value, r.url, r.read_at))

    def adoption_readings(self, model_ids: list[str]) -> list[Reading]:
        if not model_ids:
            return []
        marks = ", ".join("?" * len(model_ids))
        with self._lock:
            rows = self._execute(self._sql(
                f"SELECT model_id, name, value, url, read_at FROM adoption_readings WHERE model_id IN ({marks}) "
                "ORDER BY model_id, name"), tuple(model_ids)).fetchall()
        return [Reading(m, n, float(v), u, float(t)) for m, n, v, u, t in rows]

    def record_attestation(self, model_id: str, digest: str, fingerprint: str) -> tuple[str, float, bool]:
        with self._lock:
            row = self._execute(self._sql(
                "INSERT INTO attestations (model_id, digest, fingerprint, recorded_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (model_id, digest) DO NOTHING RETURNING fingerprint, recorded_at"),
                (model_id, digest, fingerprint, time.time())).fetchone()
            created = row is not None
            if not created:
                row = self._execute(self._sql("SELECT fingerprint, recorded_at FROM attestations WHERE model_id = ? "
                                              "AND digest = ?"), (model_id, digest)).fetchone()
        if row is None:
            raise Unavailable("attestation store lost a row it just reported as present; retry")
        return str(row[0]), float(row[1]), created

    def attestation(self, model_id: str, digest: str) -> tuple[str, float] | None:
        with self._lock:
            row = self._execute(self._sql("SELECT fingerprint, recorded_at FROM attestations WHERE model_id = ? AND "
                                          "digest = ?"), (model_id, digest)).fetchone()
        return None if row is None else (str(row[0]), float(row[1]))

    def close(self) -> None:
        with self._lock:
            self._db.close()


class SqliteStore(_SqlStore):
    """One SQLite file in WAL mode with synchronous=FULL: a commit survives a process kill and a
    power cut. One connection, guarded by a lock (calls come from the service's worker thread)."""

    _unavailable = (sqlite3.OperationalError,)
    _label = "SQLite"
    _system = "sqlite"

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute(_SCHEMA.format(id_type="INTEGER PRIMARY KEY AUTOINCREMENT"))
            self._db.execute(_INDEX)
            self._db.execute(_DEPLOYMENTS)
            self._db.execute(_ADOPTION)
            self._db.execute(_ATTESTATIONS)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open SQLite database {path}: {exc}") from exc


class PostgresStore(_SqlStore):
    """PostgreSQL (psycopg 3): several ranker replicas share one match graph. Each record is its own
    committed transaction; the unique key makes concurrent retries from different replicas safe."""

    placeholder = "%s"
    _system = "postgresql"

    def __init__(self, url: str) -> None:
        import psycopg

        super().__init__()
        self._unavailable = (psycopg.OperationalError,)
        self._label = "PostgreSQL"
        self.url = url
        try:
            self._db = psycopg.connect(url, autocommit=True, connect_timeout=10)
            self._db.execute(_SCHEMA.format(id_type="BIGSERIAL PRIMARY KEY"))
            self._db.execute(_INDEX)
            self._db.execute(_DEPLOYMENTS)
            self._db.execute(_ADOPTION)
            self._db.execute(_ATTESTATIONS)
        except psycopg.Error as exc:
            raise ConfigError(f"cannot open PostgreSQL database: {exc}") from exc


def open_store(url: str) -> MatchStore:
    """``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or ``postgresql://user@host:port/db``."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
        if not path:
            raise ConfigError(f"bad SQLite URL {url!r}: use sqlite:///relative.db or sqlite:////absolute.db")
        return SqliteStore(path)
    if parsed.scheme in ("postgresql", "postgres"):
        return PostgresStore(url)
    raise ConfigError(f"unsupported database URL {url!r}: use sqlite:///PATH or postgresql://...")
