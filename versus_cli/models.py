"""One entry point for every model the project builds (`versus models build NAME --out DIR`)."""

from __future__ import annotations

from pathlib import Path


def model_names() -> list[str]:
    from services.sd35.builders import BUILDERS as SD35
    from services.vit.builders import BUILDERS as VIT

    return sorted([*VIT, *SD35, "sd35-lora-example"])


def build_model(name: str, out: Path, base: Path | None = None) -> Path:
    """Build ``name`` into ``out``; ``sd35-lora-example`` needs ``base`` (a built SD3.5 pipeline)."""
    from services.common.errors import ConfigError
    from services.sd35.builders import BUILDERS as SD35
    from services.sd35.builders import build_lora_example
    from services.vit.builders import BUILDERS as VIT

    if name in VIT:
        return VIT[name](out)
    if name in SD35:
        return SD35[name](out)
    if name == "sd35-lora-example":
        if base is None:
            raise ConfigError("sd35-lora-example needs --base DIR (a built sd35 pipeline)")
        return build_lora_example(base, out)
    raise ConfigError(f"unknown model {name!r}; choose from {', '.join(model_names())}")
