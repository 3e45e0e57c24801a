"""Stage 5 of a comparison: the ranker's scores, verdict and leaderboard."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from versus.gateway.v1 import gateway_pb2
from versus.ranker.v1 import ranker_pb2

from services.gateway.downstream import DownstreamError

if TYPE_CHECKING:
    from services.gateway.run import Run


async def read_scores(run: Run, played: list[gateway_pb2.Duel]) -> None:
    if not run.catalog:
        return
    calls = [run.ds.call("ranker", "Score", ranker_pb2.ScoreRequest(model_ids=list(run.opts.model_ids)),
                         run.budget.timeout())]
    task = played[0].task if played else ""
    calls.append(run.ds.call("ranker", "GetLeaderboard", ranker_pb2.GetLeaderboardRequest(task=task),
                             run.budget.timeout()))
    results = await asyncio.gather(*calls, return_exceptions=True)
    for name, result in zip(("ranker.Score", "ranker.GetLeaderboard"), results, strict=True):
        if isinstance(result, DownstreamError):
            run.unavailable(name, result)
        elif isinstance(result, BaseException):
            raise result
        elif name == "ranker.Score":
            run.c.scores.CopyFrom(result)
            run.c.verdict = result.verdict
        else:
            run.c.leaderboard.CopyFrom(result)
