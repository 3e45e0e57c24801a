"""Stage 5 of a comparison: the ranker's scores and verdict, and the leaderboards.

Score is asked for the real task when the duels were real, else for every non-mechanism task (empty);
the real leaderboard is shown only when real duels exist, and mechanism duels' leaderboard apart
(``Comparison.mechanism_leaderboard``). ``GetLeaderboard("")`` never holds mechanism results."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from versus.gateway.v1 import gateway_pb2
from versus.ranker.v1 import ranker_pb2

from services.gateway.downstream import DownstreamError

if TYPE_CHECKING:
    from services.gateway.compare.run import Run


async def read_scores(run: Run, played: list[gateway_pb2.Duel]) -> None:
    if not run.catalog:
        return
    task = played[0].task if played else ""
    mechanism = task.startswith("mechanism.")
    calls = {"ranker.Score": run.ds.call("ranker", "Score", ranker_pb2.ScoreRequest(
        model_ids=list(run.opts.model_ids), task="" if mechanism else task), run.budget.timeout())}
    if task:
        calls["ranker.GetLeaderboard"] = run.ds.call("ranker", "GetLeaderboard",
                                                     ranker_pb2.GetLeaderboardRequest(task=task), run.budget.timeout())
    results = await asyncio.gather(*calls.values(), return_exceptions=True)
    for name, result in zip(calls, results, strict=True):
        if isinstance(result, DownstreamError):
            run.unavailable(name, result)
        elif isinstance(result, BaseException):
            raise result
        elif name == "ranker.Score":
            run.c.scores.CopyFrom(result)
            run.c.verdict = result.verdict
        else:
            (run.c.mechanism_leaderboard if mechanism else run.c.leaderboard).CopyFrom(result)
