"""One entry point for every model the project builds (`versus models build NAME --out DIR`) and pulls from a hub
(`versus models pull ORG/NAME --cache DIR`)."""

from __future__ import annotations

from pathlib import Path


def model_names() -> list[str]:
    from services.sd35.builders import BUILDERS as SD35
    from services.vit.builders import BUILDERS as VIT

    return sorted([*VIT, *SD35, "sd35-lora-example"])


#: How each built model's weights are made (written beside them, reported by the services).
TRAINED_HERE = {"vit-digits": "trained on scikit-learn's digits (index % 5 != 0)"}


def build_model(name: str, out: Path, base: Path | None = None) -> Path:
    """Build ``name`` into ``out``; ``sd35-lora-example`` needs ``base`` (a built SD3.5 pipeline).

    The directory gets a provenance file (random or trained-here weights) so services report it."""
    from services.common.errors import ConfigError
    from services.common.weights import write_provenance
    from services.sd35.builders import BUILDERS as SD35
    from services.sd35.builders import build_lora_example
    from services.vit.builders import BUILDERS as VIT

    if name in VIT:
        built = VIT[name](out)
    elif name in SD35:
        built = SD35[name](out)
    elif name == "sd35-lora-example":
        if base is None:
            raise ConfigError("sd35-lora-example needs --base DIR (a built sd35 pipeline)")
        built = build_lora_example(base, out)
    else:
        raise ConfigError(f"unknown model {name!r}; choose from {', '.join(model_names())}")
    target = built if built.is_dir() else built.parent
    if name in TRAINED_HERE:
        write_provenance(target, "trained-here", name, TRAINED_HERE[name])
    else:
        write_provenance(target, "random", name, "random weights from the architecture's config")
    if name in VIT:  # known answers recorded against these files' digest, at build time
        from services.vit.fingerprint import fingerprint_vit

        fingerprint_vit(target, recorded_by=f"versus models build {name}")
    readable_by_all(target)
    return built


def readable_by_all(directory: Path) -> None:
    """Give the built files the umask's ordinary mode: safetensors writes 0600, which a server running as
    another user (the image's uid 10001, a read-only volume in a pod) cannot open."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    for path in directory.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


def pull_model(hub_id: str, cache: str, include: list[str] | None = None):
    """Fetch ``hub_id``'s snapshot (only ``include`` patterns, when given) into the hub cache ``cache``: the layout
    the services read offline with HF_HUB_CACHE. Idempotent: files already there are not fetched again. The hub
    client reads its token from HF_TOKEN or the file HF_TOKEN_PATH names (gated models).

    Pulling is this command's whole job, so it fetches unless ``HF_HUB_OFFLINE`` is set true in its own
    environment: then it only checks that the cache holds the snapshot (a rerun in an offline cluster)."""
    import os

    from services.common.errors import ConfigError
    from services.common.hub import HUB_ID, resolve_source

    if not HUB_ID.fullmatch(hub_id):
        raise ConfigError(f"{hub_id!r} is not a hub id (ORG/NAME)")
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    return resolve_source(hub_id, allow_download=not offline, allow_patterns=include or None, cache_dir=cache)
