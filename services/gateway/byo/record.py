"""An eval run's outcomes in the ranker: one per image and pair of deployments, keyed honestly.

- The key is ``sha256(task | eval-set digest | image digest | sorted pair of identities)``: an edited set
  (another digest) is a new record of its own, a rerun adds nothing, and [X, Y] then [Y, X] is the same
  pair. The match itself is written in that sorted order too (model_a is the identity that sorts first,
  the outcome turned to match), so the reversed run carries the very same match and is a duplicate, not a
  conflict.
- Keys hold identities (:class:`~services.gateway.deployments.ServedIdentity`: what the endpoint served in
  the run), not ids. A deployment id whose identity changed, say a model replaced behind its endpoint,
  cannot continue its record: RegisterDeployment refuses another identity for the same id. Its outcomes
  then go to a new ranker id, ``<id>.<identity hash>``, and the page says that the identity changed.
- A key recorded before with another match is the deployments' nondeterminism: counted, never recorded
  again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass

from versus.gateway.v1 import gateway_pb2
from versus.ranker.v1 import ranker_pb2

from services.gateway.byo.evalrun import Run, paired_images
from services.gateway.byo.evalset import EvalSet
from services.gateway.deployments import LabelMatch, ServedIdentity
from services.gateway.downstream import Downstream, DownstreamError

RECORD_CONCURRENCY = 8
_SWAPPED = {ranker_pb2.OUTCOME_A_WINS: ranker_pb2.OUTCOME_B_WINS, ranker_pb2.OUTCOME_B_WINS: ranker_pb2.OUTCOME_A_WINS,
            ranker_pb2.OUTCOME_TIE: ranker_pb2.OUTCOME_TIE}


@dataclass
class Player:
    """One measured deployment, as the paired tests and the ranker see it."""

    run: Run
    match: LabelMatch
    labels: list[str]
    served: ServedIdentity
    ranker_id: str = ""  # set once registered


def outcome_key(task: str, set_digest: str, image_sha256: str, a: ServedIdentity, b: ServedIdentity) -> str:
    """The idempotency key of one image's outcome between two deployments (the pair's order does not matter)."""
    first, second = sorted((a.text(), b.text()))
    return hashlib.sha256("|".join((task, set_digest, image_sha256, first, second)).encode()).hexdigest()


def outcomes(task: str, eval_set: EvalSet, a: Player, b: Player):
    """(key, model_a, model_b, outcome, evidence) for every image both answered and both can label: a win for
    the deployment that was right when only one was, else a tie — in the identities' sorted order."""
    swap = a.served.text() > b.served.text()
    first, second = (b, a) if swap else (a, b)
    for x in paired_images(a.run, b.run, eval_set, a.match, b.match):
        outcome = (ranker_pb2.OUTCOME_TIE if x.right_a == x.right_b
                   else ranker_pb2.OUTCOME_A_WINS if x.right_a else ranker_pb2.OUTCOME_B_WINS)
        evidence = json.dumps({"eval_set": eval_set.digest, "image": x.image.sha256, "label": x.image.label,
                               "answers": {a.ranker_id: a.labels[x.answer_a], b.ranker_id: b.labels[x.answer_b]}},
                              sort_keys=True)
        yield (outcome_key(task, eval_set.digest, x.image.sha256, a.served, b.served), first.ranker_id,
               second.ranker_id, _SWAPPED[outcome] if swap else outcome, evidence)


class Recorder:
    """Registers the deployments and records the outcomes of one eval comparison."""

    def __init__(self, downstream: Downstream, task: str, eval_set: EvalSet, comparison: gateway_pb2.Comparison,
                 timeout_s: float) -> None:
        self.ds, self.task, self.set, self.c, self.timeout_s = downstream, task, eval_set, comparison, timeout_s

    def _unavailable(self, component: str, exc: DownstreamError) -> None:
        self.c.unavailable.add(component=component, code=exc.details.code.name, reason=exc.details.reason,
                               message=exc.details.message[:300])

    async def _register(self, ranker_id: str, served: ServedIdentity) -> None:
        await self.ds.call("ranker", "RegisterDeployment", ranker_pb2.RegisterDeploymentRequest(
            id=ranker_id, identity=served.text()), self.timeout_s)

    async def register(self, player: Player) -> str:
        """Register ``player`` under its id, or under ``<id>.<identity hash>`` when the ranker holds another
        identity for that id. Returns what the page should say about a changed identity ("" if none);
        ``player.ranker_id`` stays empty when the ranker cannot be reached."""
        dep_id = player.run.deployment
        try:
            try:
                await self._register(dep_id, player.served)
                player.ranker_id = dep_id
                return ""
            except DownstreamError as exc:
                if exc.details.code.name != "ALREADY_EXISTS":
                    raise
            changed = f"{dep_id}.{player.served.hash}"
            await self._register(changed, player.served)
        except DownstreamError as exc:
            self._unavailable("ranker.RegisterDeployment", exc)
            return ""
        player.ranker_id = changed
        return (f"the ranker holds another identity for {dep_id} (an earlier run): this identity's outcomes start "
                f"a new record, {changed}")

    async def record(self, test: gateway_pb2.PairedTest, a: Player, b: Player) -> None:
        """Record the pair's outcomes; count new, already recorded and answered-differently on ``test``."""
        if not (a.ranker_id and b.ranker_id):
            return
        gate = asyncio.Semaphore(RECORD_CONCURRENCY)

        async def one(key: str, model_a: str, model_b: str, outcome: int, evidence: str) -> None:
            async with gate:
                try:
                    reply = await self.ds.call("ranker", "RecordMatch", ranker_pb2.RecordMatchRequest(
                        model_a=model_a, model_b=model_b, outcome=outcome, task=self.task, evidence=evidence,
                        idempotency_key=key), self.timeout_s)
                except DownstreamError as exc:
                    if exc.details.code.name == "ALREADY_EXISTS":  # same key, another answer: nondeterminism
                        test.nondeterministic += 1
                        return
                    raise
            test.duplicates += reply.duplicate
            test.recorded += not reply.duplicate

        try:
            await asyncio.gather(*(one(*o) for o in outcomes(self.task, self.set, a, b)))
        except DownstreamError as exc:
            self._unavailable("ranker.RecordMatch", exc)

    async def leaderboard(self, report: gateway_pb2.EvalReport) -> None:
        try:
            board = await self.ds.call("ranker", "GetLeaderboard", ranker_pb2.GetLeaderboardRequest(task=self.task),
                                       self.timeout_s)
            report.leaderboard.CopyFrom(board)
        except DownstreamError as exc:
            self._unavailable("ranker.GetLeaderboard", exc)
