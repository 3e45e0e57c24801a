"""The gateway's own reading of weight files: a store it can read (``GATEWAY_WEIGHTS_ROOT``), hashed by
the gateway, so that a digest never rests on the service's word.

The root is a Hugging Face hub cache (``models--ORG--NAME/snapshots/REV/…``, also under ``hub/``) or a
weights volume (``ORG/NAME/…`` by hub id, or a directory named like the one a service loaded, e.g. the
project's built models under ``.models/``). Kubernetes mounts it read-only into the gateway. What a
service reports about where it loaded from (source, revision) only says where to look first; every path
is kept inside the root, and every file is hashed from its bytes (cached by path, size and mtime).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.common import known_answers
from services.common.weights import BUILT_KINDS, DigestCache, WeightFile, combined_digest, marker_kind, weight_paths


@dataclass(frozen=True)
class StoreReading:
    """What the gateway read itself for one served model."""

    directory: str = ""  # where the files were read ("" when nothing was found)
    files: tuple[WeightFile, ...] = ()  # every weight file there, hashed by the gateway
    #: The catalog's listed files: path → the sha256 the gateway computed ("" when absent from the store).
    listed: dict[str, str] = field(default_factory=dict)
    marker: str = ""  # the project's marker kind read from the directory ("random", "trained-here"), or ""
    note: str = ""  # why nothing was read, in words
    #: The known-answer record beside the files (services.common.known_answers), or None with known_note.
    known: dict | None = None
    known_note: str = ""

    @property
    def digest(self) -> str:
        return combined_digest(self.files)


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):
        return False


class WeightsStore:
    """Reads and hashes weight files under one root (or none: then nothing is ever computed)."""

    def __init__(self, root: str) -> None:
        self.root = Path(root).resolve() if root else None
        self.cache = DigestCache()
        self._inflight: dict[tuple, asyncio.Future[StoreReading]] = {}

    async def read_within(self, wait_s: float, hub_id: str, listed: Sequence[str], source_hint: str = "",
                          revision_hint: str = "") -> StoreReading:
        """:meth:`read` off the event loop, one read shared by concurrent callers. A first read that takes longer
        than ``wait_s`` (16 GB of SD3.5 Large) goes on in the background, caching each file's digest, and this
        answer says that the digest is not computed yet."""
        key = (hub_id, tuple(listed), source_hint, revision_hint)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(asyncio.to_thread(self.read, hub_id, listed, source_hint, revision_hint))
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        try:
            return await asyncio.wait_for(asyncio.shield(task), max(wait_s, 0.0))
        except TimeoutError:
            return StoreReading(note=f"the gateway is still hashing these weights in its store (a first read takes "
                                     f"longer than {wait_s:g} s); their digest is not computed yet")

    def candidates(self, hub_id: str, source_hint: str, revision_hint: str) -> list[Path]:
        """Directories under the root that may hold the model, most likely first."""
        if self.root is None:
            return []
        root, out = self.root, []
        if hub_id:
            for base in (root, root / "hub"):
                repo = base / f"models--{hub_id.replace('/', '--')}"
                snapshots = repo / "snapshots"
                if not snapshots.is_dir():
                    continue
                main = repo / "refs" / "main"
                order = [revision_hint, main.read_text().strip() if main.is_file() else ""]
                order += sorted(p.name for p in snapshots.iterdir())
                out += [snapshots / r for r in order if r and "/" not in r and r not in (".", "..")]
            out.append(root / hub_id)
        if source_hint:
            hint = Path(source_hint)
            out += [hint] if hint.is_absolute() else [root / source_hint]
            out.append(root / hint.name)
        seen: list[Path] = []
        for p in out:
            if p not in seen and p.is_dir() and _inside(p, root):
                seen.append(p)
        return seen

    def read(self, hub_id: str, listed: Sequence[str], source_hint: str = "", revision_hint: str = "") -> StoreReading:
        """Hash the model's files: the first candidate holding every ``listed`` file (the catalog's list), else
        the first one holding any weight file. Blocking (gigabytes on a first read): run it off the loop."""
        if self.root is None:
            return StoreReading(note="the gateway has no weights store (GATEWAY_WEIGHTS_ROOT is not set)")
        dirs = self.candidates(hub_id, source_hint, revision_hint)
        if listed:
            full = [d for d in dirs if all(_inside(d / p, d) and (d / p).is_file() for p in listed)]
            dirs = full + [d for d in dirs if d not in full]
        for d in dirs:
            paths = weight_paths(d)
            if not paths:
                continue
            files = tuple(self.cache.weight_file(d, p) for p in paths)
            by_path = {f.path: f.sha256 for f in files}
            marker, _ = marker_kind(d)
            found = {p: by_path.get(p) or (self.cache.sha256(d / p) if _inside(d / p, d) and (d / p).is_file()
                                            else "") for p in listed}
            known, known_note = known_answers.read(d)
            return StoreReading(str(d), files, found, marker if marker in BUILT_KINDS else "", known=known,
                                known_note=known_note)
        where = f"{hub_id or 'no hub id'}" + (f", reported source {source_hint}" if source_hint else "")
        return StoreReading(note=f"no weight files for {where} under the gateway's weights store {self.root}")
