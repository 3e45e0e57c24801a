"""What a route is: its name, its primary and candidate deployments, its share and its bounds, parsed once at
start from ``--route`` (``GATEWAY_ROUTE``) and the ``GATEWAY_ROUTES`` YAML file; every mistake is a
:class:`ConfigError` naming the flag and the variable.

``NAME=primary:DEP,candidate:DEP,mirror=0.25|split=0.05[,keep_inputs=true][,bound=agreement>=0.99]...
[,alpha=0.05][,queue=256][,mirror_timeout_s=5][,mirror_concurrency=8]``
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.errors import ConfigError
from services.common.route_stats import DEFAULT_ALPHA, DEFAULT_BOUNDS, Bound, parse_bounds
from services.gateway.config import GatewayConfig
from services.gateway.deployments import ID, DeploymentSpec, parse_deployment

#: Options besides primary/candidate, with their defaults (a YAML route uses the same names).
OPTIONS = ("mirror", "split", "keep_inputs", "bound", "alpha", "queue", "mirror_timeout_s", "mirror_concurrency")
YAML_KEYS = ("name", "primary", "candidate", "mirror", "split", "keep_inputs", "bounds", "alpha", "queue",
             "mirror_timeout_s", "mirror_concurrency")
MAX_QUEUE = 100_000
MAX_CONCURRENCY = 256
MAX_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class RouteSpec:
    """One route as declared."""

    name: str
    mode: str  # "shadow" (mirror share to the candidate) or "canary" (split share answered by the candidate)
    share: float
    primary: DeploymentSpec
    candidate: DeploymentSpec
    bounds: tuple[Bound, ...] = DEFAULT_BOUNDS
    alpha: float = DEFAULT_ALPHA
    keep_inputs: bool = False
    queue: int = 256
    mirror_timeout_s: float = 5.0
    mirror_concurrency: int = 8

    @property
    def canary(self) -> bool:
        return self.mode == "canary"


def parse_routes(config: GatewayConfig) -> dict[str, RouteSpec]:
    """Every route of ``config`` (flags, then the YAML file), checked against its deployments."""
    deployments: dict[str, DeploymentSpec] = {}
    for text in config.deployments:
        spec = parse_deployment(text)
        deployments.setdefault(spec.id, spec)
    raw: list[tuple[str, dict[str, Any]]] = [(config.label("route"), _flag_fields(text, config.label("route")))
                                             for text in config.route]
    if config.routes:
        where = config.label("routes")
        raw += [(where, fields) for fields in _yaml_routes(config.routes, where)]
    routes: dict[str, RouteSpec] = {}
    for where, fields in raw:
        spec = _build(fields, deployments, where)
        if spec.name in routes:
            raise ConfigError(f"{where}: route {spec.name!r} is declared twice")
        routes[spec.name] = spec
    if routes and not config.ranker:
        raise ConfigError(f"{config.label('route')}/{config.label('routes')}: routes need "
                          f"{config.label('ranker')} (their pairs and decisions live in the ranker)")
    return routes


def _flag_fields(text: str, where: str) -> dict[str, Any]:
    name, sep, rest = text.partition("=")
    if not sep:
        raise ConfigError(f"{where}: {text[:80]!r} is not NAME=primary:DEP,candidate:DEP,mirror=SHARE|split=SHARE")
    fields: dict[str, Any] = {"name": name.strip(), "bounds": []}
    for item in filter(None, (i.strip() for i in rest.split(","))):
        key, colon, value = item.partition(":")
        if colon and key in ("primary", "candidate") and "=" not in key:
            _once(fields, key, value.strip(), where, name)
            continue
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in OPTIONS:
            raise ConfigError(f"{where}: route {name[:64]!r}: unknown item {item[:60]!r} (primary:DEP, "
                              f"candidate:DEP, {', '.join(o + '=' for o in OPTIONS)})")
        if key == "bound":
            fields["bounds"].append(value.strip())
        else:
            _once(fields, key, value.strip(), where, name)
    if not fields["bounds"]:
        del fields["bounds"]
    return fields


def _once(fields: dict[str, Any], key: str, value: Any, where: str, name: str) -> None:
    if key in fields:
        raise ConfigError(f"{where}: route {name[:64]!r}: {key} given twice")
    fields[key] = value


def _yaml_routes(path: str, where: str) -> list[dict[str, Any]]:
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{where}: cannot read {path}: {str(exc)[:200]}") from None
    routes = doc.get("routes") if isinstance(doc, Mapping) else None
    if not isinstance(routes, list) or not all(isinstance(r, Mapping) for r in routes):
        raise ConfigError(f"{where}: {path} must hold 'routes:' as a list of mappings (name, primary, candidate, "
                          "mirror or split, ...)")
    out = []
    for route in routes:
        unknown = sorted(set(map(str, route)) - set(YAML_KEYS))
        if unknown:
            raise ConfigError(f"{where}: route {str(route.get('name', '?'))[:64]!r}: unknown keys "
                              f"{', '.join(u[:40] for u in unknown)} (known: {', '.join(YAML_KEYS)})")
        fields = dict(route)
        if isinstance(fields.get("bounds"), str):
            fields["bounds"] = [fields["bounds"]]
        out.append(fields)
    return out


def _build(fields: dict[str, Any], deployments: dict[str, DeploymentSpec], where: str) -> RouteSpec:
    name = str(fields.get("name", ""))
    if not ID.fullmatch(name):
        raise ConfigError(f"{where}: route name {name[:40]!r} must be 1..64 characters of [a-z0-9._-], starting "
                          "with a letter or a digit")
    at = f"{where}: route {name}"
    sides = {}
    for side in ("primary", "candidate"):
        dep = str(fields.get(side) or "")
        if not dep:
            raise ConfigError(f"{at}: {side}:DEPLOYMENT is required")
        if dep not in deployments:
            raise ConfigError(f"{at}: {side} {dep[:64]!r} is not a --deployment id (GATEWAY_DEPLOYMENTS: "
                              f"{', '.join(sorted(deployments)) or 'none registered'})")
        sides[side] = deployments[dep]
    if sides["primary"].id == sides["candidate"].id:
        raise ConfigError(f"{at}: the primary and the candidate are the same deployment")
    if ("mirror" in fields) == ("split" in fields):
        raise ConfigError(f"{at}: give exactly one of mirror=SHARE (shadow) or split=SHARE (canary)")
    mode = "shadow" if "mirror" in fields else "canary"
    share = _number(fields["mirror" if mode == "shadow" else "split"], float, at, mode == "shadow" and "mirror"
                    or "split", 0.0, 1.0)
    bounds = fields.get("bounds")
    try:
        parsed = DEFAULT_BOUNDS if bounds is None else tuple(b for text in bounds for b in parse_bounds(str(text)))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{at}: bound: {str(exc)[:200]}") from None
    if not parsed:
        raise ConfigError(f"{at}: needs at least one bound")
    return RouteSpec(
        name, mode, share, sides["primary"], sides["candidate"], parsed,
        alpha=_number(fields.get("alpha", DEFAULT_ALPHA), float, at, "alpha", 1e-9, 0.5),
        keep_inputs=_boolean(fields.get("keep_inputs", False), at),
        queue=_number(fields.get("queue", 256), int, at, "queue", 1, MAX_QUEUE),
        mirror_timeout_s=_number(fields.get("mirror_timeout_s", 5.0), float, at, "mirror_timeout_s", 0.001,
                                 MAX_TIMEOUT_S),
        mirror_concurrency=_number(fields.get("mirror_concurrency", 8), int, at, "mirror_concurrency", 1,
                                   MAX_CONCURRENCY))


def _number(value: Any, kind: type, at: str, key: str, low: float, high: float) -> Any:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{at}: {key}={str(value)[:40]!r} is not a number") from None
    if isinstance(value, bool) or not math.isfinite(number) or not low <= number <= high:
        raise ConfigError(f"{at}: {key} must be in [{low:g}, {high:g}], got {str(value)[:40]!r}")
    return number


def _boolean(value: Any, at: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"{at}: keep_inputs must be true or false, got {text[:20]!r}")
    return text in ("true", "1", "yes")
