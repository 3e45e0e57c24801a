"""Eval sets as data: a user's own labelled images, registered with ``--eval-set NAME=PATH``.

Two layouts:
- a folder with one sub-folder per label (``digits/3/img_0001.png``: label "3");
- a CSV manifest ``path,label`` (a header row is optional; paths relative to the manifest's folder).

The set's identity is the sha256 over every usable image's path, label and content digest, and its
size; both travel with every number measured on it. An image whose content repeats another's counts once
(the first path's, with its label); the others are counted as "duplicate". A hostile set gets one clear error
(:class:`~services.common.errors.ConfigError`) or counts in the report — never a crash, never a silent
drop: images that cannot be used are counted by reason (unreadable, outside the folder, not an image,
no label, too large). Directory symlinks are never followed (no loops); a file symlink is followed only
when it resolves inside the set's folder. Walking stops as soon as the file limit is passed, so a
folder of 100,000 files costs no more than one of ``max_images + 1``.

No torch here: files, hashes and PIL's header check only.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import random
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from services.common.errors import ConfigError

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
LABEL = re.compile(r"[^\x00-\x1f\x7f]{1,128}")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
MAX_IMAGES = 10_000
MAX_IMAGE_BYTES = 16 * 1024 * 1024
MAX_PIXELS = 64_000_000
#: Skip reasons, in the order a report lists them.
SKIPS = ("unreadable", "outside-folder", "not-an-image", "no-label", "too-large", "not-in-a-label-folder",
         "duplicate")


@dataclass(frozen=True)
class EvalImage:
    path: str  # relative to the set's root, "/"-separated
    label: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class EvalSet:
    name: str
    root: Path
    source: str  # the PATH it was registered with (folder or CSV)
    images: tuple[EvalImage, ...]
    digest: str  # sha256 hex over (path, label, sha256) of every usable image
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)  # skip reason → one path, for the message

    @property
    def size(self) -> int:
        return len(self.images)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(sorted({i.label for i in self.images}))

    def read(self, image: EvalImage) -> bytes:
        """The image's bytes; ConfigError when the file changed since registration (digest mismatch)."""
        data = (self.root / image.path).read_bytes()
        if hashlib.sha256(data).hexdigest() != image.sha256:
            raise ConfigError(f"eval set {self.name}: {image.path} changed since it was registered")
        return data

    def describe(self) -> str:
        skipped = ", ".join(f"{n} {r}" for r, n in self.skipped.items() if n)
        return (f"eval set {self.name}: {self.size} images, {len(self.labels)} labels, sha256 {self.digest[:12]}"
                + (f" ({skipped} skipped)" if skipped else ""))


def parse_registration(text: str) -> tuple[str, str]:
    """``NAME=PATH`` → (name, path), one clear line when malformed."""
    name, sep, path = text.partition("=")
    if not sep or not path:
        raise ConfigError(f"--eval-set takes NAME=PATH, got {text[:80]!r}")
    if not NAME.fullmatch(name):
        raise ConfigError(f"--eval-set name must be 1..32 characters of [a-z0-9_-], got {name[:40]!r}")
    return name, path


def load_eval_set(name: str, path: str | Path, *, max_images: int = MAX_IMAGES) -> EvalSet:
    """Read and digest an eval set (folder or CSV). ConfigError when nothing usable remains or a limit is
    passed."""
    source = Path(path)
    if not source.exists():
        raise ConfigError(f"eval set {name}: {source} does not exist")
    if source.is_file():
        root, entries = source.parent.resolve(), _csv_entries(source, max_images)
    elif source.is_dir():
        root, entries = source.resolve(), _folder_entries(source.resolve(), max_images)
    else:
        raise ConfigError(f"eval set {name}: {source} is neither a folder nor a CSV file")
    if len(entries) > max_images:
        raise ConfigError(f"eval set {name}: more than {max_images} files (the limit); split the set or raise "
                          f"GATEWAY_EVAL_MAX_IMAGES")
    skipped: Counter[str] = Counter()
    examples: dict[str, str] = {}
    images = []
    for rel, label, problem in entries:
        if problem is None:
            problem, image = _check(root, rel, label)
            if image is not None:
                images.append(image)
                continue
        skipped[problem] += 1
        examples.setdefault(problem, rel[:120])
    if not images:
        detail = ", ".join(f"{n} {r} (e.g. {examples[r]})" for r, n in skipped.items())
        raise ConfigError(f"eval set {name}: no usable images in {source}" + (f": {detail}" if detail else ""))
    images.sort(key=lambda i: i.path)
    images = _once(images, skipped, examples)
    total = hashlib.sha256()
    for image in images:
        total.update(f"{image.path}\0{image.label}\0{image.sha256}\n".encode())
    return EvalSet(name, root, str(source), tuple(images), total.hexdigest(),
                   {r: skipped[r] for r in SKIPS if skipped[r]}, examples)


Entry = tuple[str, str, str | None]  # (relative path, label, skip reason or None)


def _once(images: list[EvalImage], skipped: Counter[str], examples: dict[str, str]) -> list[EvalImage]:
    """Each image content once (the first path's): a copy would be scored, and recorded, twice."""
    seen: set[str] = set()
    kept = []
    for image in images:
        if image.sha256 in seen:
            skipped["duplicate"] += 1
            examples.setdefault("duplicate", image.path[:120])
            continue
        seen.add(image.sha256)
        kept.append(image)
    return kept


def stratified_order(images: tuple[EvalImage, ...], seed: int) -> list[EvalImage]:
    """The images in a seeded, label-stratified random order: shuffled within each label, then interleaved
    in proportion to the labels' sizes, so every prefix (what a run cut short has measured) is a random
    sample with the set's label proportions. The same seed gives the same order."""
    rng = random.Random(seed)
    by_label: dict[str, list[EvalImage]] = {}
    for image in images:
        by_label.setdefault(image.label, []).append(image)
    labels = sorted(by_label)
    rng.shuffle(labels)  # which label goes first among equal positions
    keyed = []
    for rank, label in enumerate(labels):
        group = by_label[label]
        rng.shuffle(group)
        keyed.extend(((k + 0.5) / len(group), rank, image) for k, image in enumerate(group))
    keyed.sort(key=lambda t: (t[0], t[1]))
    return [image for _, _, image in keyed]


def _folder_entries(root: Path, max_images: int) -> list[Entry]:
    """Label folders one level down; files at the top level are counted, not used. Directory symlinks
    are not followed (os.walk's default), so a symlink loop is never entered."""
    entries: list[Entry] = []
    for directory, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        rel_dir = Path(directory).relative_to(root)
        for name in sorted(files):
            rel = (rel_dir / name).as_posix()
            parts = rel.split("/")
            if len(parts) < 2:
                entries.append((rel, "", "not-in-a-label-folder"))
            else:
                entries.append((rel, parts[0], None))
            if len(entries) > max_images:
                return entries
    return entries


def _csv_entries(manifest: Path, max_images: int) -> list[Entry]:
    entries: list[Entry] = []
    try:
        with manifest.open(newline="", encoding="utf-8") as fh:
            for i, row in enumerate(csv.reader(fh)):
                if i == 0 and [c.strip().lower() for c in row[:2]] == ["path", "label"]:
                    continue
                if not row or not any(c.strip() for c in row):
                    continue
                path = row[0].strip()
                label = row[1].strip() if len(row) > 1 else ""
                entries.append((path, label, None if label else "no-label"))
                if len(entries) > max_images:
                    break
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"eval set manifest {manifest} is not a UTF-8 CSV of path,label ({exc})") from None
    return entries


def _check(root: Path, rel: str, label: str) -> tuple[str, EvalImage | None]:
    """One entry → an EvalImage, or the reason it cannot be used."""
    if not LABEL.fullmatch(label):
        return "no-label", None
    candidate = root / rel
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, a broken link, or a symlink loop
        return "unreadable", None
    if not resolved.is_relative_to(root) or Path(rel).is_absolute():
        return "outside-folder", None
    if resolved.suffix.lower() not in IMAGE_SUFFIXES or not resolved.is_file():
        return "not-an-image", None
    try:
        size = resolved.stat().st_size
        if size > MAX_IMAGE_BYTES:
            return "too-large", None
        data = resolved.read_bytes()
    except OSError:
        return "unreadable", None
    if not _decodable(data):
        return "unreadable", None
    rel_norm = resolved.relative_to(root).as_posix()
    return "", EvalImage(rel_norm, label, hashlib.sha256(data).hexdigest(), size)


def _decodable(data: bytes) -> bool:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > MAX_PIXELS or min(img.size) < 1:
                    return False
                img.load()
        return True
    except Exception:  # noqa: BLE001 - any decoder failure on user bytes means "unreadable"
        return False
