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

from services.common.backend import ModelInfo, ServiceBackend
from services.common.errors import InvalidArgument, NotFound, quote
from services.common.metrics import Metrics
from services.ranker import bt
from services.ranker.adoption import HubAdoption, HubReader
from services.ranker.attestations import AttestationRecord, digest_problem, fingerprint_problem
from services.ranker.catalog import ID_PATTERN, MAX_ID_CHARS, CatalogEntry, TaskScale, load_catalog, load_tasks
from services.ranker.config import RankerConfig
from services.ranker.errors import DeploymentConflict, UnknownModel
from services.ranker.route_store import ROUTE_PREFIX, RouteStore
from services.ranker.routes import RouteBook
from services.ranker.scoring import ScoreReport, graph_stats, parse_weights, score_report
from services.ranker.store import (
    EVAL_PREFIX,
    MECHANISM_PREFIX,
    OUTCOMES,
    Match,
    MatchStore,
    is_eval,
    is_mechanism,
    open_store,
)

log = logging.getLogger(__name__)

# Request limits (documented in the proto and docs/RANKING.md; tests hold each one).
#: Task names: 1..64 of [a-z0-9._-], starting with a letter or digit.
MAX_TASK_CHARS = 64
_TASK = re.compile(rf"[a-z0-9][a-z0-9._-]{{0,{MAX_TASK_CHARS - 1}}}")
TASK_RULE = f"must be 1..{MAX_TASK_CHARS} characters of [a-z0-9._-], starting with a letter or digit"
_MODEL_ID = re.compile(ID_PATTERN.removeprefix("^").removesuffix("$"))
MODEL_ID_RULE = f"must be 1..{MAX_ID_CHARS} characters of [a-z0-9._-], starting with a letter or digit"
#: Idempotency keys: 1..128 characters, no control characters (U+0000-U+001F, U+007F-U+009F).
MAX_KEY_CHARS = 128
#: A deployment's identity text (endpoint, model, version, digest).
MAX_IDENTITY_CHARS = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
DEFAULT_TASK = "general"

Violation = tuple[str, str]


def model_id_problem(value: str) -> str | None:
    """What is wrong with ``value`` as a model id, or None. Never echoes more than a bounded quote."""
    if not value:
        return "is required"
    if len(value) > MAX_ID_CHARS:
        return f"is {len(value)} characters long; model ids are at most {MAX_ID_CHARS}"
    if not _MODEL_ID.fullmatch(value):
        return f"{quote(value)} is not a model id: {MODEL_ID_RULE}"
    return None


def _route_task_problem(task: str) -> str | None:
    if task.startswith(ROUTE_PREFIX):
        return f"{quote(task)} is under the routes' prefix {ROUTE_PREFIX!r}: route records are never matches"
    return None


def _score_task_problem(task: str) -> str | None:
    if problem := _route_task_problem(task):
        return problem
    if is_mechanism(task):
        return f"{quote(task)} is a mechanism task: mechanism results never reach a score"
    if is_eval(task):
        return (f"{quote(task)} is an eval task: its matches are between registered deployments, never catalog "
                "models, and never reach a score (read it with GetLeaderboard)")
    return None


def task_problem(task: str) -> str | None:
    if len(task) > MAX_TASK_CHARS:
        return f"is {len(task)} characters long; {TASK_RULE}"
    return None if _TASK.fullmatch(task) else f"{quote(task)} {TASK_RULE}"


def key_problem(key: str) -> str | None:
    if not 1 <= len(key) <= MAX_KEY_CHARS:
        return f"must be 1..{MAX_KEY_CHARS} characters (got {len(key)})"
    if _CONTROL.search(key):
        return "must not contain control characters (U+0000-U+001F, U+007F-U+009F)"
    return None


def _raise(violations: list[Violation]) -> None:
    if violations:
        (field, problem), *more = violations
        raise InvalidArgument(field, problem, more=more)


#: Fitted results kept per task (leaderboards, match-graph statistics); the oldest is dropped beyond it.
MAX_CACHED_TASKS = 64


def _bounded_put(cache: dict, key: str, value: tuple) -> tuple:
    cache.pop(key, None)
    while len(cache) >= MAX_CACHED_TASKS:
        cache.pop(next(iter(cache)))
    cache[key] = value
    return value


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


class RankerBackend(ServiceBackend):
    """Catalog + match store behind the runtime's backend contract.

    The device executor (one thread) is the database thread: writes stay ordered. Fits run on their
    own thread so a long bootstrap never delays a RecordMatch.
    """

    def __init__(self, config: RankerConfig, metrics: Metrics) -> None:
        super().__init__("ranker", metrics, executor=ThreadPoolExecutor(1, thread_name_prefix="ranker-db"))
        self.config = config
        self.weights = parse_weights(config.weights)
        self.catalog: dict[str, CatalogEntry] = {}
        self.tasks: dict[str, TaskScale] = {}
        self.store: MatchStore | None = None
        self.routes: RouteBook | None = None  # shadow and canary routes (routes.py), on the same database
        self._fit_pool = ThreadPoolExecutor(1, thread_name_prefix="ranker-fit")
        self._cache: dict[str, tuple[tuple[int, int], Leaderboard]] = {}
        self._graph_cache: dict[str, tuple] = {}
        self.adoption = HubAdoption(HubReader(config.hub_timeout_s), enabled=config.read_hub,
                                    max_age_s=config.adoption_max_age_s, retry_s=config.adoption_retry_s)

    # -- the backend contract -----------------------------------------------------------------------
    def load(self) -> None:
        self.catalog = load_catalog(self.config.catalog)
        self.tasks = load_tasks(self.config.catalog, self.catalog)
        self.store = open_store(self.config.db)
        self.routes = RouteBook(RouteStore(self.store), self._db)
        log.info("ranker ready", extra={"models": len(self.catalog), "db": self.config.db.split("@")[-1]})

    def describe(self) -> list[ModelInfo]:
        store = type(self.store).__name__ if self.store is not None else ""
        return [ModelInfo(id="ranker", family="bradley-terry", variant="", parameters=0, precision="", device="cpu",
                          backend="numpy", properties={"catalog_models": str(len(self.catalog)), "store": store})]

    async def stopping(self) -> None:
        if self.routes is not None:
            self.routes.close()
        if self.store is not None:
            await self.run(self.store.close)
        self._fit_pool.shutdown(wait=True)
        self.adoption.close()

    def route_book(self) -> RouteBook:
        """The shadow and canary routes (UNAVAILABLE until loaded)."""
        self.require_ready()
        assert self.routes is not None
        return self.routes

    async def _db(self, fn, *args):
        self.require_ready()
        return await self.run(fn, *args)

    def entry(self, model_id: str, field: str = "model_id") -> CatalogEntry:
        """The catalog entry for ``model_id``: INVALID_ARGUMENT for a malformed id, NOT_FOUND if unknown."""
        _raise([(field, p)] if (p := model_id_problem(model_id)) else [])
        return self._known(model_id, field)

    def _known(self, model_id: str, field: str) -> CatalogEntry:
        try:
            return self.catalog[model_id]
        except KeyError:
            raise UnknownModel(f"{field}: unknown model {quote(model_id)}; known: {', '.join(sorted(self.catalog))}",
                               resource_type="model", resource_name=model_id) from None

    async def get_model(self, model_id: str) -> tuple[CatalogEntry, int]:
        """A catalog entry and how many real (non-mechanism, non-eval) matches it played."""
        entry = self.entry(model_id)
        return entry, (await self._graph(""))[1].get(entry.id, 0)

    async def list_models(self) -> list[tuple[CatalogEntry, int]]:
        """Every catalog entry, sorted by id, with how many real (non-mechanism, non-eval) matches each played."""
        played = (await self._graph(""))[1]
        return [(self.catalog[i], played.get(i, 0)) for i in sorted(self.catalog)]

    # -- scores -----------------------------------------------------------------------------------
    async def score(self, model_ids: Sequence[str], task: str = "") -> ScoreReport:
        """Scores for 1..max_models_per_score distinct catalog models (all ids checked before any lookup);
        ``task`` ('' = every non-mechanism, non-eval task) feeds times matched and the match-graph sub-score.
        A mechanism or eval task is refused: neither ever reaches a catalog score (eval tasks hold registered
        deployments, never catalog models, so they would always show 0 matches)."""
        if task and (problem := task_problem(task) or _score_task_problem(task)):
            raise InvalidArgument("task", problem)
        if not model_ids:
            raise InvalidArgument("model_ids", "at least one model id is required")
        if len(model_ids) > self.config.max_models_per_score:
            raise InvalidArgument("model_ids", f"at most {self.config.max_models_per_score} models per request "
                                               f"(got {len(model_ids)})")
        _raise([(f"model_ids[{i}]", p) for i, m in enumerate(model_ids) if (p := model_id_problem(m))])
        seen: dict[str, int] = {}
        for i, m in enumerate(model_ids):
            if m in seen:
                raise InvalidArgument(f"model_ids[{i}]", f"repeats model_ids[{seen[m]}]")
            seen[m] = i
        entries = [self._known(m, f"model_ids[{i}]") for i, m in enumerate(model_ids)]
        stats, times = await self._graph(task)
        adoption = await self.adoption.for_models(entries, self._db, self.store)
        return score_report(entries, self.weights, stats, times, self.tasks, adoption, time.time())

    async def _graph(self, task: str):  # (GraphStats, times matched)
        """Match-graph statistics of ``task`` ('' = every non-mechanism, non-eval task), recomputed only when a match
        was recorded."""
        version = await self._db(self.store.version)
        cached = self._graph_cache.get(task)
        if cached is None or cached[0] != version:
            table = await self._db(self.store.table, task)
            times = await self._db(self.store.times_matched, task)
            stats = await asyncio.get_running_loop().run_in_executor(
                self._fit_pool, graph_stats, table, self.config.ridge)
            cached = _bounded_put(self._graph_cache, task, (version, stats, times))
        return cached[1], cached[2]

    # -- matches ------------------------------------------------------------------------------------
    def validate_match(self, a: str, b: str, outcome: int, task: str, evidence: str, key: str) -> Match:
        """Every field checked up front (all problems reported at once), then the models looked up."""
        task = task or DEFAULT_TASK
        checks = [("model_a", model_id_problem(a)), ("model_b", model_id_problem(b)),
                  ("model_b", "a model cannot be matched against itself" if a and a == b else None),
                  ("outcome", None if outcome in OUTCOMES else "must be OUTCOME_A_WINS, OUTCOME_B_WINS or OUTCOME_TIE"),
                  ("task", task_problem(task) or _route_task_problem(task)),
                  ("evidence", f"longer than {self.config.max_evidence_chars} characters ({len(evidence)})"
                   if len(evidence) > self.config.max_evidence_chars else None),
                  ("evidence", "must not contain NUL (U+0000)" if "\x00" in evidence else None),
                  ("idempotency_key", key_problem(key))]
        _raise([(field, problem) for field, problem in checks if problem])
        if not is_eval(task):
            self._known(a, "model_a")
            self._known(b, "model_b")
        return Match(a, b, outcome, task, evidence, key)

    async def record_match(self, a: str, b: str, outcome: int, task: str, evidence: str, key: str) -> tuple[int, bool]:
        match = self.validate_match(a, b, outcome, task, evidence, key)
        if is_eval(match.task):  # deployments only, so an eval task can never reach a catalog score
            for field, model in (("model_a", a), ("model_b", b)):
                if not await self._db(self.store.is_deployment, model):
                    raise UnknownModel(f"{field}: {quote(model)} is not a registered deployment (eval.* tasks take "
                                       "deployments only; RegisterDeployment first)", resource_type="deployment",
                                       resource_name=model)
        match_id, duplicate = await self._db(self.store.record, match)
        self.metrics.items.labels("ranker-matches").inc(0 if duplicate else 1)
        return match_id, duplicate

    async def register_deployment(self, deployment_id: str, identity: str) -> bool:
        """Make ``deployment_id`` known to RecordMatch (eval.* tasks) and GetLeaderboard; never a catalog id."""
        checks = [("id", model_id_problem(deployment_id)),
                  ("identity", None if 1 <= len(identity) <= MAX_IDENTITY_CHARS and not _CONTROL.search(identity)
                   else f"must be 1..{MAX_IDENTITY_CHARS} characters without control characters")]
        _raise([(field, problem) for field, problem in checks if problem])
        if deployment_id in self.catalog:
            raise DeploymentConflict(f"id: {quote(deployment_id)} is a catalog model; a deployment needs its own id")
        existed = await self._db(self.store.register_deployment, deployment_id, identity)
        if existed is None:
            raise DeploymentConflict(f"id: {quote(deployment_id)} is registered with another identity (another "
                                     "endpoint, model or version): give that deployment its own id")
        return existed

    # -- attestations -------------------------------------------------------------------------------
    async def record_attestation(self, model_id: str, digest: str, fingerprint: str) -> AttestationRecord:
        """Keep the first attestation of (model, digest) and answer the stored one (first wins)."""
        _raise([(f, p) for f, p in (("attestation.model_id", model_id_problem(model_id)),
                                    ("attestation.digest", digest_problem(digest)),
                                    ("attestation.fingerprint", fingerprint_problem(fingerprint))) if p])
        stored, at, created = await self._db(self.store.record_attestation, model_id, digest, fingerprint)
        return AttestationRecord(model_id, digest, stored, at, created)

    async def attestation(self, model_id: str, digest: str) -> AttestationRecord:
        _raise([(f, p) for f, p in (("model_id", model_id_problem(model_id)), ("digest", digest_problem(digest)))
                if p])
        found = await self._db(self.store.attestation, model_id, digest)
        if found is None:
            raise NotFound(f"no attestation of {quote(model_id)} for sha256 {digest[:16]}…",
                           resource_type="attestation", resource_name=model_id)
        return AttestationRecord(model_id, digest, found[0], found[1])

    # -- leaderboard --------------------------------------------------------------------------------
    async def leaderboard(self, task: str = "") -> Leaderboard:
        """Bradley-Terry ratings of ``task`` ('' = every catalog task; a mechanism or eval task only when named),
        refitted only after a new match."""
        _raise([("task", p)] if task and (p := task_problem(task)) else [])
        key = task or "*"
        version = await self._db(self.store.version)  # cheap; the table is read only on a miss
        cached = self._cache.get(key)
        if cached and cached[0] == version:
            return cached[1]
        table = await self._db(self.store.table, task)
        started = time.perf_counter()
        board = await asyncio.get_running_loop().run_in_executor(self._fit_pool, self._fit, task, table)
        self.metrics.compute_seconds.labels("ranker-bt").observe(time.perf_counter() - started)
        _bounded_put(self._cache, key, (version, board))
        return board

    def _fit(self, task: str, table) -> Leaderboard:  # store.MatchTable
        ids = sorted(set(table.model_a) | set(table.model_b))
        if not ids:
            return Leaderboard(task, (), 0, 0, "", ("no matches recorded" + (
                f" for task {task!r}" if task else f" outside the {MECHANISM_PREFIX}* and {EVAL_PREFIX}* tasks"),))
        index = {m: i for i, m in enumerate(ids)}
        a = np.array([index[m] for m in table.model_a])
        b = np.array([index[m] for m in table.model_b])
        o = table.outcome
        anchor = index.get(self.config.anchor_model)
        ratings = bt.bootstrap(a, b, o, len(ids), rounds=self.config.bootstrap_rounds, seed=self.config.bootstrap_seed,
                               ridge=self.config.ridge, anchor=anchor)
        notes = []
        if anchor is None:
            notes.append(f"anchor {self.config.anchor_model!r} has no matches here; "
                         "ratings are centred on a mean of 1000")
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
