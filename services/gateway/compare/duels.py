"""Stage 4 of a comparison: the head-to-head. Every generator drew the same prompts and seeds; each pair
is a duel decided by the judge's probability of the prompted class (a tie when ``|ln p_a − ln p_b|`` is
below the margin), recorded in the ranker under an idempotency key derived from what decides it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from typing import TYPE_CHECKING

from versus.gateway.v1 import gateway_pb2
from versus.ranker.v1 import ranker_pb2

from services.gateway.compare.probes import DECIDING_KINDS
from services.gateway.compare.quality import MECHANISM_TASK, TASK
from services.gateway.downstream import DownstreamError
from services.gateway.weights import weights_key

if TYPE_CHECKING:
    from services.gateway.compare.run import Run


def outcome(p_a: float, p_b: float, margin: float) -> int:
    """A wins, B wins, or a tie within ``margin`` in log-probability (GatewayConfig.tie_margin: closer than
    that, the judge's own numeric noise could decide the duel, so it is half a win each)."""
    la, lb = math.log(max(p_a, 1e-300)), math.log(max(p_b, 1e-300))
    if abs(la - lb) < margin:
        return ranker_pb2.OUTCOME_TIE
    return ranker_pb2.OUTCOME_A_WINS if la > lb else ranker_pb2.OUTCOME_B_WINS


def idempotency_key(context: str, prompt: str, seed: int, model_a: str, model_b: str) -> str:
    """``context``: the digests and settings that decide the outcome (see the module docstring)."""
    raw = "\0".join([context, prompt, str(seed), model_a, model_b]).encode()
    return "cmp-" + hashlib.sha256(raw).hexdigest()[:40]


def duels(judgements: list[gateway_pb2.Judgement], generators: list[str], context: str, margin: float,
          task: str) -> list[gateway_pb2.Duel]:
    """Every pair of generators on every (prompt, seed) both drew."""
    by = {(j.generator, j.prompt, j.seed): j for j in judgements}
    out = []
    ordered = sorted(generators)
    for i, a in enumerate(ordered):
        for b in ordered[i + 1:]:
            for (gen, prompt, seed), ja in sorted(by.items()):
                jb = by.get((b, prompt, seed))
                if gen != a or jb is None:
                    continue
                out.append(gateway_pb2.Duel(
                    model_a=a, model_b=b, prompt=prompt, seed=seed, probability_a=ja.class_probability,
                    probability_b=jb.class_probability, outcome=outcome(ja.class_probability, jb.class_probability,
                                                                         margin),
                    task=task, idempotency_key=idempotency_key(context, prompt, seed, a, b),
                    judge_id=ja.judge_id, judge_digest=ja.judge_digest, digest_a=ja.generator_digest,
                    digest_b=jb.generator_digest, judged_at=max(ja.judged_at, jb.judged_at)))
    return out


async def head_to_head(run: Run) -> list[gateway_pb2.Duel]:
    generators = sorted({j.generator for j in run.judgements})
    if not run.opts.head_to_head or len(generators) < 2 or run.vit is None:
        return []
    kinds = {run.served[g].weights.kind for g in generators} | {run.vit.weights.kind}
    task = TASK if kinds <= set(DECIDING_KINDS) else MECHANISM_TASK
    # keyed by the digests the gateway computed (weights_key): an echoed digest neither decides the task
    # (DECIDING_KINDS need computed digests) nor makes a swapped model's duels duplicates of the old one's
    digests = ",".join(f"{g}={weights_key(run.served[g].weights)}" for g in generators)
    context = f"{task}|{digests}|judge={weights_key(run.vit.weights)}|size={run.cfg.probe_size}|" \
              f"steps={run.cfg.probe_steps}"
    played = duels(run.judgements, generators, context, run.cfg.tie_margin, task)
    run.progress("head-to-head", f"{len(played)} duels among {', '.join(generators)}", 0.85)
    if run.opts.record_matches and run.ds.has("ranker"):
        await asyncio.gather(*(_record(run, d) for d in played))
    run.c.duels.extend(played)
    return played


async def _record(run: Run, duel: gateway_pb2.Duel) -> None:
    evidence_doc = json.dumps({"prompt": duel.prompt, "seed": duel.seed, "p_a": duel.probability_a,
                               "p_b": duel.probability_b, "judge": run.vit.weights.served_model_id
                               if run.vit else "", "comparison": run.c.comparison_id})
    try:
        reply = await run.ds.call("ranker", "RecordMatch", ranker_pb2.RecordMatchRequest(
            model_a=duel.model_a, model_b=duel.model_b, outcome=duel.outcome, task=duel.task,
            evidence=evidence_doc, idempotency_key=duel.idempotency_key), run.budget.timeout())
    except DownstreamError as exc:
        run.unavailable("ranker.RecordMatch", exc)
        return
    duel.match_id, duel.duplicate = reply.match_id, reply.duplicate
