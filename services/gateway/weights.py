"""Which weights a service really serves, established by the gateway, never taken from the service's word.

:func:`classify_weights` turns what a service reports (``ModelInfo.weights``: per-file sha256, combined
digest, source, revision, the kind it claims) into ``gateway.v1.ServedWeights`` with a ``kind`` and a
``proof`` in plain words:

- **real**: every served weight file's sha256 equals the digest the catalog records from the
  checkpoint's own repository (``CatalogEntry.published_files``), and the weights were loaded as the
  catalog's hub id;
- **operator-attested**: the combined digest equals the one the deployer pinned for this model in the
  gateway's config (``--attest MODEL_ID=SHA256``);
- **trained-here** / **random**: built by this project (its ``versus-weights.json`` marker): they
  decide claims about this deployment only, never the catalog checkpoint's;
- **external-unverified**: anything else, including a service that calls its weights real with a
  digest nobody published: a mechanism check;
- **unknown**: the service described no weights.
"""

from __future__ import annotations

from collections.abc import Mapping

from versus.common.v1 import common_pb2
from versus.gateway.v1 import gateway_pb2
from versus.ranker.v1 import ranker_pb2

from services.common.convert import PRECISION_FROM_PROTO

REAL, ATTESTED, UNVERIFIED, UNKNOWN = "real", "operator-attested", "external-unverified", "unknown"
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


def _published_match(w: common_pb2.ServedWeightsInfo, entry: ranker_pb2.CatalogEntry) -> tuple[bool, str]:
    """Whether the served files are the catalog's published checkpoint, and why (or why not)."""
    where = entry.published_files_source or "no source recorded"
    if not entry.published_files:
        return False, f"the catalog records no published weight digests for {entry.id} ({where})"
    if not w.files:
        return False, "the service reported no per-file sha256"
    published = {f.path: f.sha256 for f in entry.published_files}
    wrong = [f"{f.path}: served sha256 {_short(f.sha256)}, " + (
        f"published {_short(published[f.path])}" if f.path in published else "not a published file")
        for f in w.files if published.get(f.path) != f.sha256]
    if wrong:
        return False, "served weight files differ from the published checkpoint (" + "; ".join(wrong) + ")"
    if w.source != entry.hub_id:
        return False, (f"every served file matches, but the weights were loaded as {w.source or 'an unnamed source'}"
                       f", not as the catalog's hub id {entry.hub_id or '(none)'}")
    return True, (f"{len(w.files)} of {len(w.files)} served weight files match the sha256 the catalog records from "
                  f"{entry.hub_id} ({where}); loaded as {w.source}" + (f" at revision {w.revision}" if w.revision
                                                                           else ""))


def classify_weights(service: str, info: common_pb2.ModelInfo, entry: ranker_pb2.CatalogEntry | None,
                     attested: Mapping[str, str]) -> gateway_pb2.ServedWeights:
    """``ServedWeights`` for one served model: its ``kind`` established from digests, with the ``proof``.

    ``entry`` is the catalog entry the service serves (None when unknown); ``attested`` maps a catalog
    id (or, without an entry, the served id) to the combined sha256 the deployer pinned.
    """
    w = _reported(info)
    out = gateway_pb2.ServedWeights(
        service=service, served_model_id=info.id, digest=w.digest, precision=PRECISION_FROM_PROTO.get(
            info.precision, ""), device=info.device, backend=info.backend, reported_kind=w.reported_kind,
        files=list(w.files), revision=w.revision)
    if not (w.digest or w.files or w.reported_kind):
        out.kind, out.proof = UNKNOWN, "the service described no weights"
        return out
    real, why = _published_match(w, entry) if entry is not None else (False, "no catalog entry to compare with")
    key = entry.id if entry is not None else info.id
    pinned = attested.get(key, "")
    if real:
        out.kind, out.proof = REAL, why
    elif pinned and pinned == w.digest:
        out.kind, out.proof = ATTESTED, (f"operator-attested: the deployer pinned sha256 {_short(pinned)} for {key} "
                                         f"in the gateway's config and the served digest equals it; not checked "
                                         f"against a published checkpoint ({why})")
    elif w.reported_kind in BUILT_HERE:
        out.kind, out.proof = w.reported_kind, (
            f"built by this project ({w.reported_kind}, per the service's versus-weights.json marker): its "
            "measurements speak for this deployment only, never for the catalog checkpoint")
    else:
        pin = (f"; the pinned digest {_short(pinned)} for {key} differs from the served {_short(w.digest)}"
               if pinned else "")
        said = f"the service reports '{w.reported_kind}'" if w.reported_kind else "the service reports no kind"
        out.kind, out.proof = UNVERIFIED, f"unverified: {why}{pin}; {said}, which is not proof"
    return out
