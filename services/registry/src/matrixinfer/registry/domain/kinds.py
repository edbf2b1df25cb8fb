"""The registry's view of the kind table (:mod:`matrixinfer.api.kinds`): kinds as
users name them in requests, and envelopes that must hold an object.
"""

from __future__ import annotations

from matrixinfer.api import envelope
from matrixinfer.api.kinds import KINDS, Kind, Object
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.core.errors import InvalidArgument

_ALIASES: dict[str, Kind] = {}
for _k in KINDS:
    _ALIASES[_k.name] = _k
    _ALIASES[_k.name.lower()] = _k
    _ALIASES[_k.plural] = _k


def unknown_kind(value: str) -> str:
    """The message for a kind name that is none of KINDS."""
    allowed = ", ".join(k.name for k in KINDS)
    shown = value[:64] if value.isprintable() else repr(value[:64])
    return f"unknown kind {shown!r}; expected one of {allowed}"


def resolve_kind(value: str, field: str = "kind") -> Kind:
    """Accepts ``ModelInfer``, ``modelinfer`` or ``modelinfers``."""
    kind = _ALIASES.get(value)
    if kind is None:
        raise InvalidArgument.field(field, unknown_kind(value))
    return kind


def unwrap(resource: pb.Resource, field: str = "resource") -> Object:
    """The object in a client's envelope; INVALID_ARGUMENT on ``field`` if none."""
    obj = envelope.unwrap(resource)
    if obj is None:
        raise InvalidArgument.field(field, "no object set")
    return obj
