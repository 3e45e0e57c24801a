"""The ranker's data plane: catalog, scores, durable match recording, cached leaderboards (no gRPC)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from services.common.errors import InvalidArgument, Unavailable
from services.common.metrics import Metrics
from services.ranker import bt
from services.ranker.catalog import CatalogEntry, load_catalog
from services.ranker.config import RankerConfig
from services.ranker.errors import UnknownModel
from services.ranker.scoring import ScoreReport, graph_stats, parse_weights, score_report
from services.ranker.store import OUTCOMES, Match, MatchStore, open_store

log = logging.getLogger(__name__)
_TASK = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
DEFAULT_TASK = "general"


@dataclass(frozen=True)
class RatingRow:
    model_id: str
    rating: float
    ci_low: float
    ci_high: float
    times_matched: int
    rank: int
    wins: int
    losses: int
    ties: int


@dataclass(frozen=True)
class Leaderboard:
    task: str
    rows: tuple[RatingRow, ...]
    rounds: int
    matches: int
    anchor: str
    notes: tuple[str, ...]


class RankerBackend:
    def __init__(self, config: RankerConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.weights = parse_weights(config.weights)
        self.catalog: dict[str, CatalogEntry] = {}
        self.store: MatchStore | None = None
        self._db_pool = ThreadPoolExecutor(1, thread_name_prefix="ranker-db")  # one writer, ordered
        self._fit_pool = ThreadPoolExecutor(1, thread_name_prefix="ranker-fit")  # fits never block writes
        self._cache: dict[str, tuple[tuple[int, int], Leaderboard]] = {}
        self._graph_cache: tuple | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.catalog = await loop.run_in_executor(self._db_pool, load_catalog, self.config.catalog)
        self.store = await loop.run_in_executor(self._db_pool, open_store, self.config.db)
        self.metrics.model_ready.labels("ranker").set(1)
        log.info("ranker ready", extra={"models": len(self.catalog), "db": self.config.db.split("@")[-1]})

    async def close(self) -> None:
        self.metrics.model_ready.labels("ranker").set(0)
        if self.store is not None:
            await asyncio.get_running_loop().run_in_executor(self._db_pool, self.store.close)
        self._db_pool.shutdown(wait=True)
        self._fit_pool.shutdown(wait=True)

    async def _db(self, fn, *args):  # noqa: ANN001, ANN202
        if self.store is None:
            raise Unavailable("ranker is starting or stopping")
        return await asyncio.get_running_loop().run_in_executor(self._db_pool, fn, *args)

    def entry(self, model_id: str, field: str = "model_id") -> CatalogEntry:
        if not model_id:
            raise InvalidArgument(field, "is required")
        try:
            return self.catalog[model_id]
        except KeyError:
            raise UnknownModel(f"{field}: unknown model {model_id!r}; known: {', '.join(sorted(self.catalog))}") from None

    # -- scores -----------------------------------------------------------------------------------
    async def score(self, model_ids: Sequence[str]) -> ScoreReport:
        if not model_ids:
            raise InvalidArgument("model_ids", "at least one model id is required")
        if len(model_ids) > self.config.max_models_per_score:
            raise InvalidArgument("model_ids", f"at most {self.config.max_models_per_score} models per request")
        if len(set(model_ids)) != len(model_ids):
            raise InvalidArgument("model_ids", "lists a model twice")
        entries = [self.entry(m, f"model_ids[{i}]") for i, m in enumerate(model_ids)]
        stats, times = await self._graph()
        return score_report(entries, self.weights, stats, times)

    async def _graph(self):  # noqa: ANN202 - (GraphStats, times matched)
        """Match-graph statistics over all tasks, recomputed only when a match was recorded."""
        version = await self._db(self.store.version)
        if self._graph_cache is None or self._graph_cache[0] != version:
            table = await self._db(self.store.table, "")
            times = await self._db(self.store.times_matched)
            stats = await asyncio.get_running_loop().run_in_executor(self._fit_pool, graph_stats, table, self.config.ridge)
            self._graph_cache = (version, stats, times)
        return self._graph_cache[1], self._graph_cache[2]

    # -- matches ------------------------------------------------------------------------------------
    def validate_match(self, a: str, b: str, outcome: int, task: str, evidence: str, key: str) -> Match:
        self.entry(a, "model_a")
        self.entry(b, "model_b")
        if a == b:
            raise InvalidArgument("model_b", "a model cannot be matched against itself")
        if outcome not in OUTCOMES:
            raise InvalidArgument("outcome", "must be A_WINS, B_WINS or TIE")
        task = task or DEFAULT_TASK
        if not _TASK.match(task):
            raise InvalidArgument("task", "must be 1..64 characters of [a-z0-9._-], starting with a letter or digit")
        if len(evidence) > self.config.max_evidence_chars:
            raise InvalidArgument("evidence", f"longer than {self.config.max_evidence_chars} characters")
        if not 1 <= len(key) <= 128:
            raise InvalidArgument("idempotency_key", "must be 1..128 characters")
        return Match(a, b, outcome, task, evidence, key)

    async def record_match(self, a: str, b: str, outcome: int, task: str, evidence: str, key: str) -> tuple[int, bool]:
        match = self.validate_match(a, b, outcome, task, evidence, key)
        match_id, duplicate = await self._db(self.store.record, match)
        self.metrics.items.labels("ranker-matches").inc(0 if duplicate else 1)
        return match_id, duplicate

    async def times_matched(self, model_id: str) -> int:
        return (await self._db(self.store.times_matched)).get(model_id, 0)

    # -- leaderboard --------------------------------------------------------------------------------
    async def leaderboard(self, task: str = "") -> Leaderboard:
        if task and not _TASK.match(task):
            raise InvalidArgument("task", "must be 1..64 characters of [a-z0-9._-]")
        key = task or "*"
        version = await self._db(self.store.version)  # cheap; the table is read only on a miss
        cached = self._cache.get(key)
        if cached and cached[0] == version:
            return cached[1]
        table = await self._db(self.store.table, task)
        started = time.perf_counter()
        board = await asyncio.get_running_loop().run_in_executor(self._fit_pool, self._fit, task, table)
        self.metrics.compute_seconds.labels("ranker-bt").observe(time.perf_counter() - started)
        self._cache[key] = (version, board)
        return board

    def _fit(self, task: str, table) -> Leaderboard:  # noqa: ANN001 - store.MatchTable
        ids = sorted(set(table.model_a) | set(table.model_b))
        if not ids:
            return Leaderboard(task, (), 0, 0, "", ("no matches recorded" + (f" for task {task!r}" if task else ""),))
        index = {m: i for i, m in enumerate(ids)}
        a = np.array([index[m] for m in table.model_a])
        b = np.array([index[m] for m in table.model_b])
        o = table.outcome
        anchor = index.get(self.config.anchor_model)
        ratings = bt.bootstrap(a, b, o, len(ids), rounds=self.config.bootstrap_rounds, seed=self.config.bootstrap_seed,
                               ridge=self.config.ridge, anchor=anchor)
        notes = []
        if anchor is None:
            notes.append(f"anchor {self.config.anchor_model!r} has no matches here; ratings are centred on a mean of 1000")
        comps = bt.components(bt.win_matrix(a, b, o, len(ids)))
        if len(comps) > 1:
            groups = "; ".join("{" + ", ".join(ids[i] for i in c) + "}" for c in comps)
            notes.append(f"the match graph has {len(comps)} disconnected groups ({groups}); ratings compare only "
                         "within a group, each group is centred separately")
        rows = []
        for i, model in enumerate(ids):
            wins = int(np.sum((a == i) & (o == 1)) + np.sum((b == i) & (o == 2)))
            losses = int(np.sum((a == i) & (o == 2)) + np.sum((b == i) & (o == 1)))
            ties = int(np.sum(((a == i) | (b == i)) & (o == 3)))
            rows.append(RatingRow(model, float(ratings.rating[i]), float(ratings.ci_low[i]), float(ratings.ci_high[i]),
                                  wins + losses + ties, int(ratings.rank[i]), wins, losses, ties))
        rows.sort(key=lambda r: (r.rank, -r.rating, r.model_id))
        return Leaderboard(task, tuple(rows), ratings.rounds, len(o), ids[anchor] if anchor is not None else "",
                           tuple(notes))
