"""Which weights a model service serves: a digest of the weight files and where they came from.

No torch here (files and hashes only). The project's own builders write a small provenance file
(:data:`PROVENANCE_FILE`) into every model directory they make, saying whether the weights are random
(built from a config) or trained here; a directory without one holds external weights, reported as
"real". Reports and probes carry this so that a measurement on random weights is never mistaken for
evidence about the real model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

PROVENANCE_FILE = "versus-weights.json"
KINDS = ("real", "random", "trained-here", "unknown")
#: File endings that hold weights (what the digest covers).
WEIGHT_SUFFIXES = (".safetensors", ".onnx")


@dataclass(frozen=True)
class WeightsProvenance:
    digest: str  # sha256 hex over the weight files (names and contents), "" when there are none
    kind: str  # one of KINDS
    note: str = ""

    def properties(self) -> dict[str, str]:
        """As ``ModelInfo.properties`` entries."""
        return {"weights_digest": self.digest, "weights_kind": self.kind, "weights_note": self.note}


def write_provenance(model_dir: Path, kind: str, builder: str, note: str = "") -> None:
    """Record in a built model directory how its weights were made."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    doc = {"kind": kind, "builder": builder, "note": note}
    (Path(model_dir) / PROVENANCE_FILE).write_text(json.dumps(doc, indent=2) + "\n")


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def describe_weights(source: str) -> WeightsProvenance:
    """Digest and provenance of a model directory (or a hub id, which is external by definition)."""
    path = Path(source)
    if not path.is_dir():
        return WeightsProvenance("", "real", f"hub id {source} (not hashed)")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    total = hashlib.sha256()
    for f in files:
        total.update(f"{f.relative_to(path)}\0{_file_digest(f)}\n".encode())
    digest = total.hexdigest() if files else ""
    marker = path / PROVENANCE_FILE
    if marker.exists():
        try:
            doc = json.loads(marker.read_text())
            kind = doc.get("kind") if doc.get("kind") in KINDS else "unknown"
            note = f"built by versus ({doc.get('builder', '?')}){': ' + doc['note'] if doc.get('note') else ''}"
            return WeightsProvenance(digest, kind, note)
        except (OSError, ValueError, AttributeError):
            return WeightsProvenance(digest, "unknown", f"unreadable {PROVENANCE_FILE}")
    return WeightsProvenance(digest, "real", "external weights (no versus provenance file)")
