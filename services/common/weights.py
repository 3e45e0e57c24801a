"""Which weights a model service serves: the sha256 of each weight file, a combined digest, and where
they came from.

No torch here (files and hashes only). The project's own builders write a small provenance file
(:data:`PROVENANCE_FILE`) into every model directory they make, saying whether the weights are random
(built from a config) or trained here. A directory without one holds someone else's weights: reported
as "external", never "real" — what a service says about its own weights is a description, and the
gateway proves weights real only by comparing the per-file sha256 with the digests the checkpoint's
own repository publishes (services/gateway/weights.py).

Every digest is computed from the file's bytes, never read from a name: in a Hugging Face cache a
snapshot's files are links into ``blobs/`` named by the sha256 the hub client fetched, and a blob
changed after download keeps its name. :class:`DigestCache` keeps each file's sha256 by (path, size,
mtime) so that a 16 GB checkpoint is hashed once per process, not once per look.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path

from services.common.hub import ModelSource

PROVENANCE_FILE = "versus-weights.json"
#: What a service can say about its weights: built here ("random", "trained-here"), someone else's
#: ("external", unverified), or "unknown" (unreadable marker).
KINDS = ("random", "trained-here", "external", "unknown")
#: Kinds a builder may record in its marker.
BUILT_KINDS = ("random", "trained-here")
#: File endings that hold weights (what the digest covers).
WEIGHT_SUFFIXES = (".safetensors", ".onnx")


@dataclass(frozen=True)
class WeightFile:
    path: str  # relative to the model directory, "/"-separated
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class WeightsProvenance:
    digest: str  # sha256 hex over the weight files (paths and sha256), "" when there are none
    kind: str  # one of KINDS: what the service reports, never proof
    note: str = ""
    source: str = ""  # the hub id or directory the weights were loaded from
    revision: str = ""  # the hub snapshot's commit, when loaded through a hub cache
    files: tuple[WeightFile, ...] = ()

    def properties(self) -> dict[str, str]:
        """As ``ModelInfo.properties`` entries."""
        return {"weights_digest": self.digest, "weights_kind": self.kind, "weights_note": self.note}


def write_provenance(model_dir: Path, kind: str, builder: str, note: str = "") -> None:
    """Record in a built model directory how its weights were made."""
    if kind not in BUILT_KINDS:
        raise ValueError(f"kind must be one of {BUILT_KINDS}")
    doc = {"kind": kind, "builder": builder, "note": note}
    (Path(model_dir) / PROVENANCE_FILE).write_text(json.dumps(doc, indent=2) + "\n")


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (links followed; a hub blob's name is never taken for its content)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class DigestCache:
    """sha256 of file contents, remembered by (resolved path, size, mtime in ns): a file rewritten in place
    changes its size or mtime and is hashed again. Thread-safe (the gateway hashes off its event loop)."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()
        self.hashed = 0  # files actually read (for tests and logs)

    def sha256(self, path: Path) -> str:
        real = Path(path).resolve()
        st = real.stat()
        key = (str(real), st.st_size, st.st_mtime_ns)
        with self._lock:
            if key in self._known:
                return self._known[key]
        digest = file_sha256(real)
        with self._lock:
            self._known[key] = digest
            self.hashed += 1
        return digest

    def weight_file(self, directory: Path, path: Path) -> WeightFile:
        return WeightFile(path.relative_to(directory).as_posix(), self.sha256(path), path.stat().st_size)


def weight_paths(directory: Path) -> list[Path]:
    """Every weight file under ``directory`` (links followed), sorted by relative path."""
    return sorted((p for p in directory.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file()),
                  key=lambda p: p.relative_to(directory).as_posix())


def weight_files(directory: Path, cache: DigestCache | None = None) -> tuple[WeightFile, ...]:
    """Every weight file under ``directory`` with the sha256 of its bytes, sorted by path."""
    cache = cache or DigestCache()
    return tuple(cache.weight_file(directory, p) for p in weight_paths(directory))


def combined_digest(files: tuple[WeightFile, ...]) -> str:
    """sha256 over each file's relative path and sha256, "" without files."""
    total = hashlib.sha256()
    for f in files:
        total.update(f"{f.path}\0{f.sha256}\n".encode())
    return total.hexdigest() if files else ""


def marker_kind(directory: Path) -> tuple[str, str]:
    """The kind the project's marker in ``directory`` records, and a note ("external" without one)."""
    marker = directory / PROVENANCE_FILE
    if not marker.exists():
        return "external", "external weights (no versus provenance file): unverified"
    try:
        doc = json.loads(marker.read_text())
        kind = doc.get("kind") if doc.get("kind") in BUILT_KINDS else "unknown"
        return kind, f"built by versus ({doc.get('builder', '?')}){': ' + doc['note'] if doc.get('note') else ''}"
    except (OSError, ValueError, AttributeError):
        return "unknown", f"unreadable {PROVENANCE_FILE}"


def describe_weights(model: ModelSource | str) -> WeightsProvenance:
    """Per-file sha256, combined digest and reported kind of a model directory or resolved hub snapshot."""
    if isinstance(model, str):
        model = ModelSource(model, Path(model))
    if not model.path.is_dir():
        return WeightsProvenance("", "unknown", f"{model.source} is not a local directory (not hashed)",
                                 source=model.source)
    files = weight_files(model.path)
    kind, note = marker_kind(model.path)
    return WeightsProvenance(combined_digest(files), kind, note, source=model.hub_id or model.source,
                             revision=model.revision, files=files)
