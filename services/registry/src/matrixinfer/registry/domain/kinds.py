"""The table of resource kinds: names, apiVersions, messages, and the Resource envelope.

Everything that needs to know "which kinds exist" reads this one table, so adding a
kind is one entry here plus its admission rules.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.core.errors import InvalidArgument

# Every kind's message has the same shape: api_version, kind, metadata, spec, status.
# mypy cannot express "a protobuf message with these fields" without a union, so the
# union below is the type the domain passes around.
Object = (
    pb.Model
    | pb.ModelInfer
    | pb.ModelServer
    | pb.ModelRoute
    | pb.AutoscalingPolicy
    | pb.ApiKey
)


@dataclass(frozen=True)
class Kind:
    name: str
    group: str
    plural: str
    message: type[Object]
    #: Name of the field in the Resource envelope's oneof.
    envelope_field: str
    #: Model keeps a revision per spec change (ListRevisions, Rollback).
    has_revisions: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/v1alpha1"


KINDS: tuple[Kind, ...] = (
    Kind("Model", "registry.matrixinfer.ai", "models", pb.Model, "model", True),
    Kind(
        "ModelInfer",
        "workload.matrixinfer.ai",
        "modelinfers",
        pb.ModelInfer,
        "model_infer",
    ),
    Kind(
        "ModelServer",
        "networking.matrixinfer.ai",
        "modelservers",
        pb.ModelServer,
        "model_server",
    ),
    Kind(
        "ModelRoute",
        "networking.matrixinfer.ai",
        "modelroutes",
        pb.ModelRoute,
        "model_route",
    ),
    Kind(
        "AutoscalingPolicy",
        "registry.matrixinfer.ai",
        "autoscalingpolicies",
        pb.AutoscalingPolicy,
        "autoscaling_policy",
    ),
    Kind("ApiKey", "security.matrixinfer.ai", "apikeys", pb.ApiKey, "api_key"),
)

BY_NAME: dict[str, Kind] = {k.name: k for k in KINDS}
_ALIASES: dict[str, Kind] = {}
for _k in KINDS:
    _ALIASES[_k.name] = _k
    _ALIASES[_k.name.lower()] = _k
    _ALIASES[_k.plural] = _k


def resolve_kind(value: str, field: str = "kind") -> Kind:
    """Accepts ``ModelInfer``, ``modelinfer`` or ``modelinfers``."""
    kind = _ALIASES.get(value)
    if kind is None:
        allowed = ", ".join(k.name for k in KINDS)
        shown = value[:64] if value.isprintable() else repr(value[:64])
        raise InvalidArgument.field(
            field, f"unknown kind {shown!r}; expected one of {allowed}"
        )
    return kind


def kind_of(obj: Message) -> Kind:
    for k in KINDS:
        if isinstance(obj, k.message):
            return k
    raise TypeError(f"not a MatrixInfer resource: {type(obj).__name__}")


def wrap(obj: Object) -> pb.Resource:
    resource = pb.Resource()
    getattr(resource, kind_of(obj).envelope_field).CopyFrom(obj)
    return resource


def unwrap(resource: pb.Resource, field: str = "resource") -> Object:
    which = resource.WhichOneof("object")
    if which is None:
        raise InvalidArgument.field(field, "no object set")
    obj: Object = getattr(resource, which)
    return obj
