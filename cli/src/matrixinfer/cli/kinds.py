"""Kind names and their aliases, as users type them."""

from __future__ import annotations

import click

#: Canonical kind → the names the CLI accepts for it (besides the kind itself, any
#: case).
ALIASES: dict[str, tuple[str, ...]] = {
    "Model": ("model", "models", "mo"),
    "ModelInfer": ("modelinfer", "modelinfers", "mi", "infer", "infers"),
    "ModelServer": ("modelserver", "modelservers", "ms", "server", "servers"),
    "ModelRoute": ("modelroute", "modelroutes", "mr", "route", "routes"),
    "AutoscalingPolicy": (
        "autoscalingpolicy",
        "autoscalingpolicies",
        "asp",
        "policy",
        "policies",
    ),
    "ApiKey": ("apikey", "apikeys", "ak", "key", "keys"),
}
_LOOKUP = {alias: kind for kind, names in ALIASES.items() for alias in names}
_LOOKUP.update({kind.lower(): kind for kind in ALIASES})


def resolve_kind(value: str) -> str:
    """The canonical kind for ``value``; a usage error naming the choices if none."""
    kind = _LOOKUP.get(value.lower())
    if kind is None:
        raise click.UsageError(f"unknown kind {value!r}; use one of: {help_text()}")
    return kind


def help_text() -> str:
    return "; ".join(f"{k} ({', '.join(v[1:])})" for k, v in ALIASES.items())
