"""Operator attestations kept by the ranker (every gateway replica reads the same record): validation of
what a gateway may store, and the stored record as a domain value. No gRPC and no I/O here."""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.common import known_answers

#: The largest known-answer record accepted (four images' logits over 1,000 labels are about 80 KiB).
MAX_FINGERPRINT_BYTES = 256 * 1024
_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class AttestationRecord:
    model_id: str
    digest: str
    fingerprint: str  # a known-answer record (JSON), "" for a model without one
    recorded_at: float  # seconds since the epoch
    created: bool = False  # stored by this call (RecordAttestation)


def digest_problem(digest: str) -> str | None:
    if len(digest) != 64 or not _DIGEST.fullmatch(digest):
        return f"must be 64 lower-case hex characters (a sha256), got {len(digest)} characters"
    return None


def fingerprint_problem(fingerprint: str) -> str | None:
    if not fingerprint:
        return None
    size = len(fingerprint.encode())
    if size > MAX_FINGERPRINT_BYTES:
        return f"is {size} bytes; at most {MAX_FINGERPRINT_BYTES}"
    try:
        known_answers.parse(fingerprint)
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        return f"is not a known-answer record: {str(exc)[:200]}"
    return None
