"""Which weights a service really serves, established by the gateway from files it hashed itself.

:func:`classify_weights` turns the gateway's own reading of its weights store (:mod:`weights_store`,
``GATEWAY_WEIGHTS_ROOT``: every file hashed from its bytes) into ``gateway.v1.ServedWeights`` with a
``kind`` and a ``proof`` in plain words. What the service reports (``ModelInfo.weights``: per-file sha256,
combined digest, source, revision, kind) is kept as "reported by the service" and only says where to
look in the store; it never makes weights real or attested:

- **real**: the gateway hashed *every* file the catalog lists for the checkpoint (``CatalogEntry.
  published_files``, from the checkpoint's own repository) in its store, and each sha256 equals the
  catalog's; a subset is never enough;
- **operator-attested**: the combined digest the gateway computed equals the one the deployer pinned for
  this model (``--attest MODEL_ID=SHA256``; a digest the service merely echoes is not), and the served
  model reproduces the known-answer fingerprint the ranker recorded on the first attested run
  (:func:`check_attestation`; every gateway replica reads the same record). A model changed since is
  contradicted: "the served model changed since attestation";
- **trained-here** / **random**: built by this project (its ``versus-weights.json`` marker, read by the
  gateway in the store, or reported: a reported built-here kind only ever lowers what weights decide):
  they decide claims about this deployment only, never the catalog checkpoint's;
- **external-unverified**: anything else, including a service that calls its weights real or echoes the
  catalog's digests: a mechanism check;
- **unknown**: the service described no weights and the store holds none.

What binds the hashed files to what answers on the wire is the known-answer check (:func:`check_known_answers`:
reference inputs whose outputs are recorded against the digest, at build time or by ``versus weights
fingerprint``); without a record, a digest says what the store holds, not what the endpoint runs.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping

from versus.common.v1 import common_pb2
from versus.gateway.v1 import gateway_pb2
from versus.ranker.v1 import ranker_pb2

from services.common import known_answers
from services.common.convert import PRECISION_FROM_PROTO
from services.gateway.downstream import DownstreamError
from services.gateway.weights_store import StoreReading, WeightsStore

REAL, ATTESTED, UNVERIFIED, UNKNOWN = "real", "operator-attested", "external-unverified", "unknown"
#: Sends reference images to the served model and returns one row of logits per image.
Ask = Callable[[list[bytes]], Awaitable[list[list[float]]]]
#: Keeps an attestation in the ranker: (model id, digest, fingerprint) → (stored fingerprint, created, recorded at).
Attest = Callable[[str, str, str], Awaitable[tuple[str, bool, str]]]
#: Kinds a service may report from the project's own marker (they only ever lower what weights decide).
BUILT_HERE = ("random", "trained-here")


def _reported(info: common_pb2.ModelInfo) -> common_pb2.ServedWeightsInfo:
    """The service's own description; older services carry only the digest and kind as properties."""
    if info.HasField("weights"):
        return info.weights
    props = info.properties
    return common_pb2.ServedWeightsInfo(digest=props.get("weights_digest", ""),
                                        reported_kind=props.get("weights_kind", ""))


def _short(digest: str) -> str:
    return digest[:16] + "…" if digest else "none"


def weights_key(w: gateway_pb2.ServedWeights) -> str:
    """What keys cached probes and recorded duels for these weights: the kind established now and the digest the
    gateway computed. Without one, the service's reported digest, marked as reported: such weights are never
    real or attested, so a model swapped behind an echoed digest can only meet mechanism marks cached for its
    predecessor. The kind is part of the key because a model swapped behind unchanged files keeps the digest:
    once its known answers or attestation contradict it, its kind changes, and no mark cached for the model
    it replaced (with the kind that let them decide) is reused."""
    return f"{w.kind}|" + (f"sha256:{w.digest}" if w.digest else f"reported:{w.reported_digest}")


def digest_words(w: gateway_pb2.ServedWeights, chars: int = 16) -> str:
    """The digest as a page shows it: computed by the gateway, or only reported by the service (and so no proof)."""
    if w.digest:
        return f"sha256 {w.digest[:chars]}… (computed by the gateway)"
    if w.reported_digest:
        return f"sha256 {w.reported_digest[:chars]}… (reported by the service, not computed)"
    return "no digest"


async def read_store(store: WeightsStore, info: common_pb2.ModelInfo, entry: ranker_pb2.CatalogEntry | None,
                     wait_s: float = 60.0) -> StoreReading:
    """The gateway's own reading of the model's files, hashed off the event loop (at most ``wait_s`` waited)."""
    w = _reported(info)
    listed = [f.path for f in entry.published_files] if entry is not None else []
    return await store.read_within(wait_s, entry.hub_id if entry is not None else "", listed, w.source, w.revision)


def _published_match(reading: StoreReading, entry: ranker_pb2.CatalogEntry) -> tuple[bool, str]:
    """Whether the store holds every file of the catalog's published checkpoint, and why (or why not)."""
    where = entry.published_files_source or "no source recorded"
    if not entry.published_files:
        return False, f"the catalog records no published weight digests for {entry.id} ({where})"
    if not reading.directory:
        return False, reading.note
    missing = [p for p, d in reading.listed.items() if not d]
    wrong = [f"{f.path}: computed sha256 {_short(reading.listed[f.path])}, published {_short(f.sha256)}"
             for f in entry.published_files if reading.listed.get(f.path) and reading.listed[f.path] != f.sha256]
    n = len(entry.published_files)
    if missing:
        return False, (f"{len(missing)} of the {n} files the catalog lists are not in the gateway's store at "
                       f"{reading.directory} ({', '.join(missing[:4])}): a subset is no proof")
    if wrong:
        return False, "the store's files differ from the published checkpoint (" + "; ".join(wrong) + ")"
    return True, (f"the gateway hashed all {n} files the catalog lists for {entry.hub_id} in {reading.directory}: "
                  f"every sha256 equals the one the catalog records ({where})")


def _reported_note(w: common_pb2.ServedWeightsInfo, computed: str) -> str:
    if not w.digest:
        return "the service reports no digest"
    if not computed:
        return f"the service reports sha256 {_short(w.digest)} (reported by the service; decides nothing)"
    same = "the same as" if w.digest == computed else "unlike"
    return f"the service reports sha256 {_short(w.digest)}, {same} the computed one (reported; decides nothing)"


def classify_weights(service: str, info: common_pb2.ModelInfo, entry: ranker_pb2.CatalogEntry | None,
                     attested: Mapping[str, str], reading: StoreReading | None = None) -> gateway_pb2.ServedWeights:
    """``ServedWeights`` for one served model: its ``kind`` established from the digests the gateway computed
    (``reading``; None: no store), with the ``proof``.

    ``entry`` is the catalog entry the service serves (None when unknown); ``attested`` maps a catalog
    id (or, without an entry, the served id) to the combined sha256 the deployer pinned.
    """
    w = _reported(info)
    reading = reading or StoreReading(note="the gateway has no weights store (GATEWAY_WEIGHTS_ROOT is not set)")
    out = gateway_pb2.ServedWeights(
        service=service, served_model_id=info.id, digest=reading.digest, precision=PRECISION_FROM_PROTO.get(
            info.precision, ""), device=info.device, backend=info.backend, reported_kind=w.reported_kind,
        files=[common_pb2.WeightFile(path=f.path, sha256=f.sha256, size_bytes=f.size_bytes)
               for f in reading.files], revision=w.revision, reported_digest=w.digest, reported_files=list(w.files),
        store_directory=reading.directory)
    said = _reported_note(w, out.digest)
    if not (w.digest or w.files or w.reported_kind or reading.files):
        out.kind, out.proof = UNKNOWN, f"the service described no weights and {reading.note or 'the store holds none'}"
        return out
    real, why = _published_match(reading, entry) if entry is not None else (False, "no catalog entry to compare with")
    key = entry.id if entry is not None else info.id
    pinned = attested.get(key, "")
    built = reading.marker or (w.reported_kind if w.reported_kind in BUILT_HERE else "")
    if real:
        out.kind, out.proof = REAL, f"{why}; {said}"
    elif pinned and pinned == out.digest:
        out.kind, out.proof = ATTESTED, (f"operator-attested: the deployer pinned sha256 {_short(pinned)} for {key} "
                                         f"in the gateway's config and the gateway computed it from "
                                         f"{reading.directory}; not checked against a published checkpoint ({why})")
    elif built:
        whose = "the project's marker in the gateway's store" if reading.marker else "the service's marker, reported"
        out.kind, out.proof = built, (
            f"built by this project ({built}, per {whose}): its measurements speak for this deployment only, "
            f"never for the catalog checkpoint ({why}); "
            + (f"sha256 {_short(out.digest)} computed by the gateway from {reading.directory}" if out.digest
               else reading.note))
    else:
        pin = ""
        if pinned:
            pin = (f"; the pinned digest {_short(pinned)} for {key} differs from the computed {_short(out.digest)}"
                   if out.digest else f"; a digest {_short(pinned)} is pinned for {key}, but the gateway computed "
                                      "none (an echoed digest is not attestation)")
        kind = f"; the service calls them '{w.reported_kind}', which is not proof" if w.reported_kind else ""
        out.kind, out.proof = UNVERIFIED, f"unverified: {why}{pin}; {said}{kind}"
    return out


async def check_known_answers(out: gateway_pb2.ServedWeights, reading: StoreReading, ask: Ask | None) -> None:
    """Bind the hashed files to what answers on the wire: the served model must reproduce the outputs recorded
    for the computed digest, within the tolerance for its backend and precision (as reported: they choose
    the tolerance only), or its weights are contradicted and no longer decide anything."""
    doc = reading.known
    if ask is None:
        out.known_answers, out.known_answers_detail = "not run", "known answers are recorded for ViT classifiers only"
        return
    if doc is None or not out.digest:
        out.known_answers = "not found"
        out.known_answers_detail = reading.known_note or reading.note or "no record for these weights"
        return
    if doc["weights_digest"] != out.digest:
        out.known_answers, out.known_answers_detail = "not found", (
            f"the record in {reading.directory} is for sha256 {_short(doc['weights_digest'])}, not for the "
            f"computed {_short(out.digest)}")
        return
    try:
        observed = await ask(known_answers.reference_images())
    except DownstreamError as exc:
        out.known_answers, out.known_answers_detail = "not run", f"Classify failed: {exc.details.message}"
        return
    ok, said = known_answers.compare(doc, observed, out.backend, out.precision)
    rec = doc.get("recorded_with", {})
    source = (f"recorded by {rec.get('by', '?')} on {rec.get('backend', '?')}/{rec.get('precision', '?')} for sha256 "
              f"{_short(out.digest)}")
    out.known_answers_detail = f"{len(observed)} reference images, {source}: {said}"
    out.known_answers = "reproduced" if ok else "contradicted"
    if not ok:
        _lower(out, "contradicted: the served model does not reproduce the known answers of the files the gateway "
                    f"hashed ({out.known_answers_detail})")


def _lower(out: gateway_pb2.ServedWeights, why: str) -> None:
    """The weights decide nothing any more (external-unverified), and the proof says why first."""
    out.proof = f"{why}; was {out.kind}: {out.proof}"
    out.kind = UNVERIFIED


def _unattested(out: gateway_pb2.ServedWeights, status: str, why: str) -> None:
    out.attestation, out.attestation_detail = status, why
    _lower(out, f"not attested: {why}")


async def check_attestation(out: gateway_pb2.ServedWeights, model_id: str, ask: Ask | None,
                            attest: Attest | None) -> None:
    """Operator-attested weights stay so only while the served model reproduces the fingerprint the ranker
    recorded on the first attested run (every gateway replica reads the same record)."""
    if out.kind != ATTESTED:
        return
    if attest is None:
        _unattested(out, "not checked", "no ranker keeps the attestation's fingerprint")
        return
    observed: list[list[float]] | None = None
    if ask is not None:
        try:
            observed = await ask(known_answers.reference_images())
        except DownstreamError as exc:
            _unattested(out, "not checked", f"the reference images could not be classified ({exc.details.message})")
            return
        if len(observed) != known_answers.REFERENCE_COUNT:
            _unattested(out, "not checked", f"{len(observed)} answers for {known_answers.REFERENCE_COUNT} reference "
                                            "images")
            return
    mine = json.dumps(known_answers.record(observed, out.digest, backend=out.backend, precision=out.precision,
                                           device=out.device, recorded_by="gateway, first attested run")
                      ) if observed is not None else ""
    try:
        stored, created, at = await attest(model_id, out.digest, mine)
    except DownstreamError as exc:
        _unattested(out, "not checked", f"the ranker could not keep or read the attestation ({exc.details.message})")
        return
    if created:
        out.attestation, out.attestation_detail = "recorded now", (
            f"first attested run: digest {_short(out.digest)} and " + (
                f"the fingerprint of {len(observed or [])} reference images recorded in the ranker" if mine
                else "no fingerprint (no known answers for this kind of model)") + f" at {at}")
        return
    if not stored or observed is None:
        out.attestation, out.attestation_detail = "not checked", (
            f"attested at {at} without a fingerprint to reproduce: the digest alone binds the files, not the "
            "served model")
        return
    ok, said = known_answers.compare(known_answers.parse(stored), observed, out.backend, out.precision)
    out.attestation_detail = f"fingerprint recorded at {at}: {said}"
    out.attestation = "reproduced" if ok else "contradicted"
    if not ok:
        _lower(out, f"contradicted: the served model changed since attestation ({out.attestation_detail})")
