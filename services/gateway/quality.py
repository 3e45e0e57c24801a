"""Cross-model quality and the head-to-head: SD3.5 draws "a photo of a {class}", the ViT service judges.

Top-1/top-5 hit rates of the prompted ImageNet class are the prompt-adherence evidence; for two
generators, the same prompt and seed are a duel decided by the judge's probability of the prompted
class (a tie when ``|ln p_a − ln p_b|`` is below the margin). Duels are recorded in the ranker with an
idempotency key derived from what decides the outcome — the pair, the prompt, the seed, the weights
digests of both generators and of the judge, the image size and steps — so a retried comparison (or a
new one that would only repeat the same deterministic duel) never counts twice, while new weights do.
On weights that are not real the duels go to a "mechanism." task.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from versus.gateway.v1 import gateway_pb2
from versus.ranker.v1 import ranker_pb2

TASK = "t2i-imagenet-judge"
MECHANISM_TASK = "mechanism." + TASK


def prompt_for(imagenet_class: str) -> str:
    return f"a photo of a {imagenet_class}"


def class_index(labels: list[str], imagenet_class: str) -> int:
    """Index of the judge label naming ``imagenet_class`` (any of its comma-separated synonyms), or -1."""
    wanted = imagenet_class.strip().lower()
    for i, label in enumerate(labels):
        if wanted in (part.strip().lower() for part in label.split(",")):
            return i
    return -1


@dataclass(frozen=True)
class Judged:
    """The judge's view of one generated image."""

    top1_label: str
    class_probability: float
    rank: int  # 1-based rank of the prompted class among all labels


def judge(scores: list[tuple[int, str, float]], target: int) -> Judged:
    """``scores``: (index, label, probability) over all labels, best first."""
    rank = next((r for r, (i, _, _) in enumerate(scores, 1) if i == target), len(scores) + 1)
    prob = next((p for i, _, p in scores if i == target), 0.0)
    return Judged(scores[0][1], prob, rank)


def summarise(judgements: list[gateway_pb2.Judgement], generator: str, mechanism: bool) -> gateway_pb2.QualitySummary:
    mine = [j for j in judgements if j.generator == generator]
    n = len(mine)
    return gateway_pb2.QualitySummary(
        generator=generator, images=n, top1_hit_rate=sum(j.top1_hit for j in mine) / n if n else 0.0,
        top5_hit_rate=sum(j.top5_hit for j in mine) / n if n else 0.0,
        mean_class_probability=sum(j.class_probability for j in mine) / n if n else 0.0, mechanism_only=mechanism)


def outcome(p_a: float, p_b: float, margin: float) -> int:
    """A wins, B wins, or a tie within ``margin`` in log-probability."""
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
                    task=task, idempotency_key=idempotency_key(context, prompt, seed, a, b)))
    return out
