"""The order of a comparison's stages. Each stage is a module of its own that takes the comparison's
state (:class:`~services.gateway.compare.run.Run`); none imports this module.

1. serving: what the catalog says (ListModels) and what the model services serve (GetModelInfo);
2. quality.choose_classes: the client's classes are checked against the judge before any probe;
3. checks: every declared check, on every served model it applies to;
4. quality.judge_generations: generators draw "a photo of a {class}", the ViT service judges;
5. duels: the head-to-head, recorded in the ranker;
6. scores: the ranker's scores, verdict and leaderboards;
7. assembly: one report per model, its marks, the feature table and the notes.
"""

from __future__ import annotations

from versus.gateway.v1 import gateway_pb2

from services.gateway.compare import assembly, checks, duels, quality, scores, serving
from services.gateway.compare.run import Run


async def execute(run: Run) -> gateway_pb2.Comparison:
    run.progress("catalog", "reading the catalog", 0.02)
    await serving.read_catalog(run)
    run.progress("probe", "asking the model services what they serve", 0.08)
    await serving.read_infos(run)
    await quality.choose_classes(run)
    await checks.run_checks(run)
    await quality.judge_generations(run)
    played = await duels.head_to_head(run)
    run.progress("scores", "scores and leaderboard from the ranker", 0.92)
    await scores.read_scores(run, played)
    assembly.assemble(run)
    run.progress("done", "comparison ready", 1.0)
    return run.c
