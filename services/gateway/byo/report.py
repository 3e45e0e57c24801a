"""Eval-run results → the ``EvalReport`` parts of a Comparison (protobuf only; no I/O but the thumbnails)."""

from __future__ import annotations

import io

from versus.gateway.v1 import gateway_pb2

from services.gateway.byo.evalrun import ALPHA, Paired, Run, score
from services.gateway.byo.evalset import EvalSet
from services.gateway.deployments import DeploymentSpec, LabelMatch, ServedIdentity
from services.gateway.oip_client import Endpoint

THUMBNAIL_PX = 64
MARKS = {"complete": gateway_pb2.EVIDENCE_MARK_VERIFIED_LIVE, "partial": gateway_pb2.EVIDENCE_MARK_UNAVAILABLE,
         "unavailable": gateway_pb2.EVIDENCE_MARK_UNAVAILABLE, "contradicted": gateway_pb2.EVIDENCE_MARK_CONTRADICTED}
#: No image scored decides nothing, whether the run completed or was cut short.
UNDECIDED = gateway_pb2.EVIDENCE_MARK_UNSPECIFIED


def eval_set_info(s: EvalSet) -> gateway_pb2.EvalSetInfo:
    return gateway_pb2.EvalSetInfo(name=s.name, digest=s.digest, images=s.size, labels=len(s.labels),
                                   skipped=s.skipped)


def served_identity(spec: DeploymentSpec, endpoint: Endpoint | None, run: Run) -> ServedIdentity:
    """What the deployment served in this run, and its answers to the known-answer reference images."""
    return ServedIdentity(spec.identity(), endpoint.platform if endpoint else "",
                          tuple(endpoint.versions) if endpoint else (), tuple(sorted(run.weights_digests)),
                          run.fingerprint)


def deployment_eval(spec: DeploymentSpec, endpoint: Endpoint | None, run: Run, eval_set: EvalSet,
                    match: LabelMatch, served: ServedIdentity) -> gateway_pb2.DeploymentEval:
    """One deployment's row (Wilson intervals through scipy: run it off the event loop)."""
    identity = gateway_pb2.DeploymentIdentity(
        id=spec.id, target=spec.target, model=spec.model, version=spec.version,
        weights_digest=",".join(served.weights_digests), platform=served.platform,
        signature=endpoint.describe() if endpoint else "", versions=served.versions, fingerprint=served.fingerprint,
        identity_hash=served.hash)
    out = gateway_pb2.DeploymentEval(deployment=identity, mark=MARKS[run.state], state=run.state, reason=run.reason,
                                     answered=run.answered, not_measured=run.not_measured, concurrency=run.concurrency,
                                     retries=run.retries, measured_at=run.started_at)
    if run.state == "contradicted" or endpoint is None:
        return out
    r = score(run, eval_set, match)
    if r.top1.n == 0 and run.state in ("complete", "partial"):
        out.mark = UNDECIDED
        out.reason = (f"0 images scored ({run.answered} answered, {r.unmatched} with a label it cannot output)"
                      + (f"; {run.reason}" if run.reason else ""))[:300]
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


def paired_test(a: str, b: str, p: Paired, eval_set: EvalSet, adjusted: float, pairs: int,
                alpha: float = ALPHA) -> gateway_pb2.PairedTest:
    """One pair's row; ``adjusted`` is its Holm-adjusted p among ``pairs`` tests (= p_value for one pair),
    and decides significance. Reads the disagreeing images' thumbnails: run it off the event loop."""
    significant = p.n > 0 and adjusted < alpha
    shown = f"McNemar exact p = {p.p_value:.2g}" + (f", Holm-adjusted over {pairs} pairs p = {adjusted:.2g}"
                                                     if pairs > 1 else "")
    if p.n == 0:
        verdict = "undecided: no image that both answered and both can label"
    elif significant:
        better = a if p.only_a > p.only_b else b
        verdict = (f"{better} is more accurate on {p.n} images: {max(p.only_a, p.only_b)} vs "
                   f"{min(p.only_a, p.only_b)} discordant ({shown})")
    else:
        verdict = f"no significant difference on {p.n} images ({shown})"
    test = gateway_pb2.PairedTest(deployment_a=a, deployment_b=b, images=p.n, both_right=p.both_right,
                                  both_wrong=p.both_wrong, only_a=p.only_a, only_b=p.only_b, p_value=p.p_value,
                                  p_value_adjusted=adjusted, significant=significant, verdict=verdict)
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
