"""Registered deployments: image classifiers served by any Open Inference Protocol (KServe V2) server —
Triton, KServe, MLServer, OpenVINO Model Server, or Versus itself — that a comparison measures live on
the user's own labelled data.

``--deployment ID=TARGET,model=NAME[,version=V][,labels=FILE][,processor=FILE][,output=NAME]
[,token-file=F][,tls-ca=F][,label-map=FILE]``

What the endpoint is comes from its ModelMetadata, not from the user: one BYTES input (encoded images)
or one FP32 ``[-1, 3, H, W]`` input (preprocessed pixels: a ``processor=`` file in the Hugging Face
``preprocessor_config.json`` format says how), and an FP32 ``[-1, N]`` output (``output=`` names it when
there are several). Labels come from a ``labels=`` file (one per line, index order, or a
``config.json`` with ``id2label``) or from a BYTES label output read once at start. An endpoint that is
not such a classifier is refused at start with one clear line (:class:`ConfigError`).

A deployment is not a catalog checkpoint. Its identity (:class:`ServedIdentity`) is what the endpoint
serves, read at every run: ID, endpoint, model and requested version, the ModelMetadata platform and
versions, the weights digest the server reports in its response parameters (``weights_digest``: labelled
as reported, never recomputed) and the known-answer fingerprint where one was taken. Replacing the model
behind an endpoint changes the identity, and the outcomes then go to a new record.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from services.common.errors import ConfigError

ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
#: "<id>.<12 hex>" names a changed identity's record in the ranker, so a user's id may not end that way.
CHANGED_ID = re.compile(r".*\.[0-9a-f]{12}")
MAX_IDENTITY_CHARS = 1024  # the ranker's limit on a deployment's identity text
OPTIONS = ("model", "version", "labels", "processor", "output", "token-file", "tls-ca", "label-map")
MAX_LABELS = 100_000


@dataclass(frozen=True)
class DeploymentSpec:
    id: str
    target: str
    model: str
    version: str = ""
    labels: str = ""
    processor: str = ""
    output: str = ""
    token_file: str = ""
    tls_ca: str = ""
    label_map: str = ""

    def token(self) -> str:
        return Path(self.token_file).read_text().strip() if self.token_file else ""

    def identity(self) -> str:
        """ID, endpoint, model and version: what the user registered (what it serves is :class:`ServedIdentity`)."""
        return f"{self.id}={self.target}/{self.model}" + (f"@{self.version}" if self.version else "")


@dataclass(frozen=True)
class ServedIdentity:
    """What a deployment serves, as seen in one run: what a recorded outcome is about."""

    registered: str  # DeploymentSpec.identity(): id, endpoint, model, requested version
    platform: str = ""  # ModelMetadata
    versions: tuple[str, ...] = ()  # ModelMetadata
    weights_digests: tuple[str, ...] = ()  # reported by the server in ModelInfer parameters; never recomputed
    fingerprint: str = ""  # known-answer fingerprint of the served model; "" until one is taken

    def text(self) -> str:
        """The identity as one line (at most the ranker's 1024 characters; a longer one keeps its hash)."""
        parts = [self.registered, f"platform={self.platform}", f"versions={','.join(self.versions)}",
                 f"weights_digest(reported)={','.join(self.weights_digests)}", f"fingerprint={self.fingerprint}"]
        text = "; ".join(re.sub(r"[\x00-\x1f\x7f-\x9f]", "?", p) for p in parts)
        if len(text) > MAX_IDENTITY_CHARS:
            text = text[:MAX_IDENTITY_CHARS - 80] + f" ... sha256 {hashlib.sha256(text.encode()).hexdigest()}"
        return text

    @property
    def hash(self) -> str:
        """12 hex of the identity's sha256: names a changed identity's ranker record."""
        return hashlib.sha256(self.text().encode()).hexdigest()[:12]

    def changes(self, before: ServedIdentity) -> list[str]:
        """What differs from ``before``, in words (empty when nothing does)."""
        fields = (("endpoint/model/version", self.registered, before.registered),
                  ("platform", self.platform, before.platform),
                  ("versions", ",".join(self.versions), ",".join(before.versions)),
                  ("weights digest (reported)", ",".join(self.weights_digests), ",".join(before.weights_digests)),
                  ("known-answer fingerprint", self.fingerprint, before.fingerprint))
        return [f"{name} {old[:24] or '(none)'} → {new[:24] or '(none)'}" for name, new, old in fields if new != old]


def parse_deployment(text: str) -> DeploymentSpec:
    """Parse one ``--deployment`` value. The target may itself hold commas (``ipv4:a:1,b:2``): items that
    are not ``KEY=VALUE`` with a known key belong to it."""
    dep_id, sep, rest = text.partition("=")
    if not sep or not rest:
        raise ConfigError(f"--deployment takes ID=TARGET,model=NAME[,...], got {text[:80]!r}")
    if not ID.fullmatch(dep_id):
        raise ConfigError(f"--deployment id must be 1..64 characters of [a-z0-9._-], got {dep_id[:40]!r}")
    if CHANGED_ID.fullmatch(dep_id):
        raise ConfigError(f"--deployment id {dep_id[:40]!r} ends in '.' and 12 hex digits, which names a changed "
                          "identity's record in the ranker; choose another id")
    target, options = _split_target(dep_id, rest)
    if not options.get("model"):
        raise ConfigError(f"--deployment {dep_id}: model=NAME is required")
    for key in ("labels", "processor", "token-file", "tls-ca", "label-map"):
        if options.get(key) and not Path(options[key]).is_file():
            raise ConfigError(f"--deployment {dep_id}: {key} file {options[key]} does not exist")
    return DeploymentSpec(dep_id, target, options["model"], options.get("version", ""), options.get("labels", ""),
                          options.get("processor", ""), options.get("output", ""), options.get("token-file", ""),
                          options.get("tls-ca", ""), options.get("label-map", ""))


def _split_target(dep_id: str, rest: str) -> tuple[str, dict[str, str]]:
    target_parts: list[str] = []
    options: dict[str, str] = {}
    for item in rest.split(","):
        key, eq, value = item.partition("=")
        if eq and key in OPTIONS:
            if key in options:
                raise ConfigError(f"--deployment {dep_id}: {key}= given twice")
            options[key] = value
        elif options:
            raise ConfigError(f"--deployment {dep_id}: unknown option {item[:40]!r} (known: {', '.join(OPTIONS)})")
        else:
            target_parts.append(item)
    if not any(target_parts):
        raise ConfigError(f"--deployment {dep_id}: no TARGET")
    return ",".join(target_parts), options


def read_labels(path: str) -> list[str]:
    """Labels in index order: a text file (one per line) or a ``config.json`` with ``id2label``."""
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith(".json"):
        try:
            id2label = json.loads(text)["id2label"]
            labels = [str(id2label[str(i)]) for i in range(len(id2label))]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"labels file {path}: expected a config.json with id2label 0..N-1 ({exc})") from None
    else:
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels or len(labels) > MAX_LABELS:
        raise ConfigError(f"labels file {path}: needs 1..{MAX_LABELS} labels, got {len(labels)}")
    return labels


def read_label_map(path: str) -> dict[str, str]:
    """Eval-set label → model label: a JSON object, or CSV lines ``eval_label,model_label``."""
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith(".json"):
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"label map {path} is not JSON ({exc})") from None
        if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
            raise ConfigError(f"label map {path} must be an object of eval label → model label")
        return {str(k): v for k, v in doc.items()}
    pairs = [line.split(",", 1) for line in text.splitlines() if line.strip()]
    if any(len(p) != 2 for p in pairs):
        raise ConfigError(f"label map {path}: every line must be eval_label,model_label")
    return {a.strip(): b.strip() for a, b in pairs}


def normalise(label: str) -> str:
    """How labels are matched by name: case-folded, spaces and underscores folded, first synonym of an
    ImageNet-style "tench, Tinca tinca"."""
    return re.sub(r"[\s_]+", " ", label.split(",")[0]).strip().casefold()


@dataclass
class LabelMatch:
    """Eval-set labels → this model's label indices."""

    index: dict[str, int] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)


def match_labels(eval_labels: tuple[str, ...], model_labels: list[str], mapping: dict[str, str]) -> LabelMatch:
    by_name = {normalise(lab): i for i, lab in reversed(list(enumerate(model_labels)))}
    exact = {lab: i for i, lab in reversed(list(enumerate(model_labels)))}
    match = LabelMatch()
    for lab in eval_labels:
        wanted = mapping.get(lab, lab)
        i = exact.get(wanted, by_name.get(normalise(wanted), -1))
        if i < 0:
            match.unmatched.append(lab)
        else:
            match.index[lab] = i
    return match


# -- preprocessing for FP32 endpoints (numpy + PIL; the gateway loads no torch) ------------------------
@dataclass(frozen=True)
class Processor:
    """The subset of a ViT-style ``preprocessor_config.json`` that defines pixels: resize to
    (height, width) with a PIL resample, rescale, normalise, channels first."""

    height: int
    width: int
    resample: int = 2  # PIL.Image.BILINEAR
    do_resize: bool = True
    rescale_factor: float = 1 / 255
    do_rescale: bool = True
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    do_normalize: bool = True

    @classmethod
    def from_file(cls, path: str) -> Processor:
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
            size = doc.get("size", 224)
            height, width = (size, size) if isinstance(size, int) else (
                size.get("height", size.get("shortest_edge")), size.get("width", size.get("shortest_edge")))
            proc = cls(int(height), int(width), int(doc.get("resample", 2)), bool(doc.get("do_resize", True)),
                       float(doc.get("rescale_factor", 1 / 255)), bool(doc.get("do_rescale", True)),
                       tuple(float(x) for x in doc.get("image_mean", (0.5,) * 3)),  # type: ignore[arg-type]
                       tuple(float(x) for x in doc.get("image_std", (0.5,) * 3)),  # type: ignore[arg-type]
                       bool(doc.get("do_normalize", True)))
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(f"processor file {path}: not a preprocessor_config.json ({exc})") from None
        if min(proc.height, proc.width) < 1 or len(proc.mean) != 3 or len(proc.std) != 3 or 0 in proc.std:
            raise ConfigError(f"processor file {path}: size must be positive and mean/std have 3 non-zero values")
        return proc

    def __call__(self, data: bytes):  # -> np.ndarray [3, H, W] float32
        import io

        import numpy as np
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            rgb = img.convert("RGB")
        if self.do_resize:
            rgb = rgb.resize((self.width, self.height), resample=self.resample)
        x = np.asarray(rgb, dtype=np.float32)
        if self.do_rescale:
            x = x * np.float32(self.rescale_factor)
        if self.do_normalize:
            x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)
