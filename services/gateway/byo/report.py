"""Eval-run results → the ``EvalReport`` parts of a Comparison (protobuf only; no I/O but the thumbnails)."""

from __future__ import annotations

import io

from versus.gateway.v1 import gateway_pb2

from services.gateway.byo.evalrun import Paired, Run, score
from services.gateway.byo.evalset import EvalSet
from services.gateway.deployments import DeploymentSpec, LabelMatch
from services.gateway.oip_client import Endpoint

THUMBNAIL_PX = 64
MARKS = {"complete": gateway_pb2.EVIDENCE_MARK_VERIFIED_LIVE, "partial": gateway_pb2.EVIDENCE_MARK_UNAVAILABLE,
         "unavailable": gateway_pb2.EVIDENCE_MARK_UNAVAILABLE, "contradicted": gateway_pb2.EVIDENCE_MARK_CONTRADICTED}


def eval_set_info(s: EvalSet) -> gateway_pb2.EvalSetInfo:
    return gateway_pb2.EvalSetInfo(name=s.name, digest=s.digest, images=s.size, labels=len(s.labels),
                                   skipped=s.skipped)


def deployment_eval(spec: DeploymentSpec, endpoint: Endpoint | None, run: Run, eval_set: EvalSet,
                    match: LabelMatch) -> gateway_pb2.DeploymentEval:
    identity = gateway_pb2.DeploymentIdentity(
        id=spec.id, target=spec.target, model=spec.model, version=spec.version, weights_digest=run.weights_digest,
        platform=endpoint.platform if endpoint else "", signature=endpoint.describe() if endpoint else "")
    out = gateway_pb2.DeploymentEval(deployment=identity, mark=MARKS[run.state], state=run.state, reason=run.reason,
                                     answered=run.answered, not_measured=run.not_measured, concurrency=run.concurrency,
                                     retries=run.retries, measured_at=run.started_at)
    if run.state == "contradicted" or endpoint is None:
        return out
    r = score(run, eval_set, match)
    (t1_lo, t1_hi), (t5_lo, t5_hi) = r.top1.interval, r.top5.interval
    out.unmatched, out.scored = r.unmatched, r.top1.n
    out.unmatched_labels.extend(r.unmatched_labels)
    out.top1_hits, out.top5_hits, out.top1, out.top5 = r.top1.hits, r.top5.hits, r.top1.rate, r.top5.rate
    out.top1_ci_low, out.top1_ci_high, out.top5_ci_low, out.top5_ci_high = t1_lo, t1_hi, t5_lo, t5_hi
    for label, acc in r.per_class.items():
        lo, hi = acc.interval
        out.per_class.add(label=label, hits=acc.hits, images=acc.n, ci_low=lo, ci_high=hi)
    out.latency_p50_ms, out.latency_p95_ms, out.throughput_img_s = r.latency_p50_ms, r.latency_p95_ms, \
        r.throughput_img_s
    return out


def paired_test(a: str, b: str, p: Paired, eval_set: EvalSet) -> gateway_pb2.PairedTest:
    if p.significant:
        better = a if p.only_a > p.only_b else b
        verdict = (f"{better} is more accurate on {p.n} images: {max(p.only_a, p.only_b)} vs "
                   f"{min(p.only_a, p.only_b)} discordant (McNemar exact p = {p.p_value:.2g})")
    else:
        verdict = f"no significant difference on {p.n} images (McNemar exact p = {p.p_value:.2g})"
    test = gateway_pb2.PairedTest(deployment_a=a, deployment_b=b, images=p.n, both_right=p.both_right,
                                  both_wrong=p.both_wrong, only_a=p.only_a, only_b=p.only_b, p_value=p.p_value,
                                  significant=p.significant, verdict=verdict)
    for label, answer_a, answer_b, n in p.confusions:
        test.confusions.add(label=label, answer_a=answer_a, answer_b=answer_b, images=n)
    by_path = {i.path: i for i in eval_set.images}
    for path, label, answer_a, answer_b in p.disagreements:
        test.disagreements.add(path=path, label=label, answer_a=answer_a, answer_b=answer_b,
                               thumbnail_png=thumbnail(eval_set.read(by_path[path])))
    return test


def thumbnail(data: bytes) -> bytes:
    """A small PNG of an eval image (nearest-neighbour when upscaling, so 8x8 digits stay legible)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB")
    scale = THUMBNAIL_PX / max(rgb.size)
    size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    rgb = rgb.resize(size, Image.NEAREST if scale > 1 else Image.BILINEAR)
    buf = io.BytesIO()
    rgb.save(buf, format="PNG")
    return buf.getvalue()
