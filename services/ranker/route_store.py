"""Storage of shadow and canary routes (docs/SHADOW.md), beside the match store and on its connection.

Route records live in their own ``route_*`` tables under the key ``route.NAME``: they are never matches and
never reach a catalog table, score, leaderboard or times-matched count. SQLite and PostgreSQL share the SQL;
each batch is one transaction. Uniqueness in the database (not checks in Python) makes retries and races
between replicas safe: a batch id, a (route, request id) and a (route, request id, row) label are each
stored once, and the first decision of a bound and the first rollback of an epoch stay. No gRPC here.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from services.ranker.store import PostgresStore, _SqlStore

#: The key prefix of route records (as ``mechanism.`` and ``eval.`` are for tasks).
ROUTE_PREFIX = "route."
#: Rows per multi-row INSERT (well under SQLite's and PostgreSQL's parameter limits).
_CHUNK = 400

_TABLES = (
    """CREATE TABLE IF NOT EXISTS route_declarations (
        route TEXT NOT NULL, epoch INTEGER NOT NULL, fingerprint TEXT NOT NULL, declaration TEXT NOT NULL,
        declared_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (route, epoch))""",
    """CREATE TABLE IF NOT EXISTS route_pairs (
        id {id_type}, route TEXT NOT NULL, epoch INTEGER NOT NULL, request_id TEXT NOT NULL,
        recorded_at DOUBLE PRECISION NOT NULL, primary_status TEXT NOT NULL, candidate_status TEXT NOT NULL,
        primary_latency_s DOUBLE PRECISION NOT NULL, candidate_latency_s DOUBLE PRECISION NOT NULL,
        rows TEXT NOT NULL, input_digest TEXT NOT NULL, kept_input {blob}, answered_by TEXT NOT NULL,
        UNIQUE (route, request_id))""",
    "CREATE INDEX IF NOT EXISTS route_pairs_epoch ON route_pairs (route, epoch, id)",
    """CREATE TABLE IF NOT EXISTS route_counters (
        route TEXT NOT NULL, name TEXT NOT NULL, value BIGINT NOT NULL, PRIMARY KEY (route, name))""",
    """CREATE TABLE IF NOT EXISTS route_batches (
        route TEXT NOT NULL, batch_id TEXT NOT NULL, stored BIGINT NOT NULL, duplicates BIGINT NOT NULL,
        recorded_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (route, batch_id))""",
    """CREATE TABLE IF NOT EXISTS route_feedback (
        id {id_type}, route TEXT NOT NULL, request_id TEXT NOT NULL, row_index INTEGER NOT NULL,
        label TEXT NOT NULL, recorded_at DOUBLE PRECISION NOT NULL, UNIQUE (route, request_id, row_index))""",
    """CREATE TABLE IF NOT EXISTS route_decisions (
        route TEXT NOT NULL, epoch INTEGER NOT NULL, bound TEXT NOT NULL, state TEXT NOT NULL,
        decided_at DOUBLE PRECISION NOT NULL, pairs BIGINT NOT NULL, interval_json TEXT NOT NULL,
        PRIMARY KEY (route, epoch, bound))""",
    """CREATE TABLE IF NOT EXISTS route_rollbacks (
        route TEXT NOT NULL, epoch INTEGER NOT NULL, reason TEXT NOT NULL, rolled_back_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (route, epoch))""",
)

_PAIR_COLUMNS = ("route, epoch, request_id, recorded_at, primary_status, candidate_status, primary_latency_s, "
                 "candidate_latency_s, rows, input_digest, kept_input, answered_by")


@dataclass(frozen=True)
class PairRecord:
    """One mirrored request as stored (rows: (primary label, candidate label, top-5 overlap or -1))."""

    request_id: str
    recorded_at: float
    primary_status: str
    candidate_status: str
    primary_latency_s: float
    candidate_latency_s: float
    rows: tuple[tuple[str, str, int], ...]
    input_digest: str
    kept_input: bytes
    answered_by: str


@dataclass(frozen=True)
class BatchResult:
    epoch: int
    stored: int
    duplicates: int
    #: The batch id was already stored: nothing was written and (stored, duplicates) are the first call's.
    repeated: bool


@dataclass(frozen=True)
class StoredPair:
    id: int
    request_id: str
    recorded_at: float
    primary_status: str
    candidate_status: str
    primary_latency_s: float
    candidate_latency_s: float
    rows: tuple[tuple[str, str, int], ...]
    input_digest: str
    answered_by: str


def _chunks(items: Sequence, size: int = _CHUNK) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class RouteStore:
    """Route tables on the match store's connection (and under its lock)."""

    def __init__(self, store: _SqlStore) -> None:
        self._store = store
        self._pg = isinstance(store, PostgresStore)
        kinds = {"id_type": "BIGSERIAL PRIMARY KEY", "blob": "BYTEA"} if self._pg else {
            "id_type": "INTEGER PRIMARY KEY AUTOINCREMENT", "blob": "BLOB"}
        with store._lock:
            for sql in _TABLES:
                store._execute(sql.format(**kinds))

    # -- plumbing -----------------------------------------------------------------------------------
    def _q(self, sql: str, args: tuple = ()):
        return self._store._execute(self._store._sql(sql), args)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One transaction under the store's lock: everything in it is written, or nothing."""
        with self._store._lock:
            if self._pg:
                with self._store._db.transaction():
                    yield
                return
            self._store._execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._store._db.execute("ROLLBACK")
                raise
            try:
                self._store._execute("COMMIT")
            except sqlite3.Error:
                self._store._db.execute("ROLLBACK")
                raise

    def _insert_many(self, table: str, columns: str, rows: Sequence[tuple], conflict: str, returning: str) -> list:
        """Multi-row INSERT … ON CONFLICT DO NOTHING; the rows actually inserted (their ``returning``)."""
        inserted: list = []
        width = columns.count(",") + 1
        for chunk in _chunks(rows):
            marks = ", ".join(["(" + ", ".join("?" * width) + ")"] * len(chunk))
            args = tuple(v for row in chunk for v in row)
            inserted += self._q(f"INSERT INTO {table} ({columns}) VALUES {marks} ON CONFLICT ({conflict}) DO NOTHING "
                                f"RETURNING {returning}", args).fetchall()
        return inserted

    # -- writes -------------------------------------------------------------------------------------
    def record_batch(self, route: str, fingerprint: str, declaration: str, batch_id: str,
                     pairs: Sequence[PairRecord], counters: dict[str, int]) -> BatchResult:
        """Store a gateway's batch once per ``batch_id``: the declaration (a new fingerprint starts epoch + 1),
        the pairs (a recorded request id is a duplicate, not stored) and the counter increments."""
        now = time.time()
        with self._transaction():
            if not self._q("INSERT INTO route_batches (route, batch_id, stored, duplicates, recorded_at) VALUES "
                           "(?, ?, 0, 0, ?) ON CONFLICT (route, batch_id) DO NOTHING RETURNING route",
                           (route, batch_id, now)).fetchall():  # a retry: answer the first call's counts
                stored, dups = self._q("SELECT stored, duplicates FROM route_batches WHERE route = ? AND batch_id = ?",
                                       (route, batch_id)).fetchone()
                epoch = self._q("SELECT MAX(epoch) FROM route_declarations WHERE route = ?", (route,)).fetchone()[0]
                return BatchResult(int(epoch or 1), int(stored), int(dups), True)
            epoch = self._epoch(route, fingerprint, declaration, now)
            first: dict[str, PairRecord] = {}
            for p in pairs:
                first.setdefault(p.request_id, p)
            rows = [(route, epoch, p.request_id, p.recorded_at, p.primary_status, p.candidate_status,
                     p.primary_latency_s, p.candidate_latency_s, json.dumps(p.rows, separators=(",", ":")),
                     p.input_digest, p.kept_input or None, p.answered_by) for p in first.values()]
            stored = len(self._insert_many("route_pairs", _PAIR_COLUMNS, rows, "route, request_id", "id"))
            dups = len(pairs) - stored
            self._q("UPDATE route_batches SET stored = ?, duplicates = ? WHERE route = ? AND batch_id = ?",
                    (stored, dups, route, batch_id))
            increments = {**counters, "duplicates": dups}
            for name, value in sorted(increments.items()):
                self._q("INSERT INTO route_counters (route, name, value) VALUES (?, ?, ?) ON CONFLICT (route, name) "
                        "DO UPDATE SET value = route_counters.value + excluded.value", (route, name, value))
        return BatchResult(epoch, stored, dups, False)

    def _epoch(self, route: str, fingerprint: str, declaration: str, now: float) -> int:
        row = self._q("SELECT epoch, fingerprint, declaration FROM route_declarations WHERE route = ? "
                      "ORDER BY epoch DESC LIMIT 1", (route,)).fetchone()
        if row is not None and row[1] == fingerprint:
            if row[2] != declaration:  # same comparison, other details (a share, keep_inputs): keep the latest
                self._q("UPDATE route_declarations SET declaration = ? WHERE route = ? AND epoch = ?",
                        (declaration, route, row[0]))
            return int(row[0])
        epoch = 1 if row is None else int(row[0]) + 1
        self._q("INSERT INTO route_declarations (route, epoch, fingerprint, declaration, declared_at) VALUES "
                "(?, ?, ?, ?, ?) ON CONFLICT (route, epoch) DO NOTHING", (route, epoch, fingerprint, declaration, now))
        return epoch

    def record_decision(self, route: str, epoch: int, bound: str, state: str, pairs: int, interval: str) -> None:
        """The first time ``bound`` left undecided in ``epoch`` (a later call changes nothing)."""
        with self._store._lock:
            self._q("INSERT INTO route_decisions (route, epoch, bound, state, decided_at, pairs, interval_json) VALUES "
                    "(?, ?, ?, ?, ?, ?, ?) ON CONFLICT (route, epoch, bound) DO NOTHING",
                    (route, epoch, bound, state, time.time(), pairs, interval))

    def record_rollback(self, route: str, epoch: int, reason: str) -> None:
        """Roll the canary of ``epoch`` back (the first reason and time stay)."""
        with self._store._lock:
            self._q("INSERT INTO route_rollbacks (route, epoch, reason, rolled_back_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (route, epoch) DO NOTHING", (route, epoch, reason, time.time()))

    def record_feedback(self, route: str, items: Sequence[tuple[str, int, str]]) -> tuple[int, int, list[str]]:
        """Store each (request id, row, label) once (the first label stays): (stored, same label, conflicting)."""
        now = time.time()
        first: dict[tuple[str, int], str] = {}
        for request_id, row, label in items:
            first.setdefault((request_id, row), label)
        with self._transaction():
            rows = [(route, rid, row, label, now) for (rid, row), label in first.items()]
            inserted = {(r, int(i)) for r, i in self._insert_many(
                "route_feedback", "route, request_id, row_index, label, recorded_at", rows,
                "route, request_id, row_index", "request_id, row_index")}
            stored_labels: dict[tuple[str, int], str] = {}
            rest = [key for key in first if key not in inserted]
            for chunk in _chunks(sorted({rid for rid, _ in rest})):
                marks = ", ".join("?" * len(chunk))
                for rid, row, label in self._q(f"SELECT request_id, row_index, label FROM route_feedback WHERE "
                                               f"route = ? AND request_id IN ({marks})", (route, *chunk)).fetchall():
                    stored_labels[(rid, int(row))] = label
        same = conflicting = 0
        conflicts: list[str] = []
        for request_id, row, label in items:
            key = (request_id, row)
            if key in inserted:
                inserted.discard(key)
            elif stored_labels.get(key, first[key]) == label:
                same += 1
            else:
                conflicting += 1
                conflicts.append(request_id)
        return len(first) - len(rest), same, conflicts

    # -- reads --------------------------------------------------------------------------------------
    def declaration(self, route: str) -> tuple[int, str] | None:
        """The route's current (epoch, declaration JSON), or None for a route never recorded."""
        with self._store._lock:
            row = self._q("SELECT epoch, declaration FROM route_declarations WHERE route = ? ORDER BY epoch DESC "
                          "LIMIT 1", (route,)).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def routes(self) -> list[str]:
        with self._store._lock:
            return sorted(r for (r,) in self._q("SELECT DISTINCT route FROM route_declarations").fetchall())

    def version(self, route: str, epoch: int) -> tuple[int, int, int, int]:
        """(pairs, largest pair id) of the epoch and (labels, largest label id) of the route: what the state is
        computed from (counters, decisions and the rollback are read each time)."""
        with self._store._lock:
            n, last = self._q("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM route_pairs WHERE route = ? AND epoch = ?",
                              (route, epoch)).fetchone()
            labels, last_label = self._q("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM route_feedback WHERE route = ?",
                                         (route,)).fetchone()
        return int(n), int(last), int(labels), int(last_label)

    def pairs(self, route: str, epoch: int, after_id: int = 0) -> list[StoredPair]:
        """The epoch's pairs with an id above ``after_id``, in id order (without kept inputs)."""
        with self._store._lock:
            rows = self._q("SELECT id, request_id, recorded_at, primary_status, candidate_status, primary_latency_s, "
                           "candidate_latency_s, rows, input_digest, answered_by FROM route_pairs WHERE route = ? "
                           "AND epoch = ? AND id > ? ORDER BY id", (route, epoch, after_id)).fetchall()
        return [StoredPair(int(i), rid, float(at), ps, cs, float(pl), float(cl),
                           tuple((p, c, int(o)) for p, c, o in json.loads(rows_json)), digest, by)
                for i, rid, at, ps, cs, pl, cl, rows_json, digest, by in rows]

    def labels(self, route: str) -> dict[tuple[str, int], str]:
        with self._store._lock:
            rows = self._q("SELECT request_id, row_index, label FROM route_feedback WHERE route = ?",
                           (route,)).fetchall()
        return {(rid, int(row)): label for rid, row, label in rows}

    def counters(self, route: str) -> dict[str, int]:
        with self._store._lock:
            rows = self._q("SELECT name, value FROM route_counters WHERE route = ?", (route,)).fetchall()
        return {name: int(value) for name, value in rows}

    def decisions(self, route: str, epoch: int) -> dict[str, tuple[str, float, int, str]]:
        """bound text → (state, decided_at, pairs, interval JSON)."""
        with self._store._lock:
            rows = self._q("SELECT bound, state, decided_at, pairs, interval_json FROM route_decisions WHERE route = ? "
                           "AND epoch = ?", (route, epoch)).fetchall()
        return {b: (s, float(at), int(n), i) for b, s, at, n, i in rows}

    def rollback(self, route: str, epoch: int) -> tuple[str, float] | None:
        with self._store._lock:
            row = self._q("SELECT reason, rolled_back_at FROM route_rollbacks WHERE route = ? AND epoch = ?",
                          (route, epoch)).fetchone()
        return None if row is None else (str(row[0]), float(row[1]))

    def kept_inputs(self, route: str, request_ids: Sequence[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        with self._store._lock:
            for chunk in _chunks(list(request_ids)):
                marks = ", ".join("?" * len(chunk))
                for rid, data in self._q(f"SELECT request_id, kept_input FROM route_pairs WHERE route = ? AND "
                                         f"request_id IN ({marks}) AND kept_input IS NOT NULL",
                                         (route, *chunk)).fetchall():
                    found[rid] = bytes(data)
        return found

    def find_requests(self, request_ids: Sequence[str], route: str = "") -> dict[str, dict[str, int]]:
        """request id → {route: rows of its pair} for the recorded ones (of ``route`` only, when named)."""
        found: dict[str, dict[str, int]] = {}
        with self._store._lock:
            for chunk in _chunks(sorted(set(request_ids))):
                marks = ", ".join("?" * len(chunk))
                where = "route = ? AND " if route else ""
                args = ((route,) if route else ()) + tuple(chunk)
                for r, rid, rows_json in self._q(f"SELECT route, request_id, rows FROM route_pairs WHERE {where}"
                                                 f"request_id IN ({marks})", args).fetchall():
                    found.setdefault(rid, {})[r] = len(json.loads(rows_json))
        return found
