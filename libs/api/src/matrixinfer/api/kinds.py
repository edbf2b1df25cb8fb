"""The table of resource kinds: names, apiVersions, messages and envelope fields.

Everything that needs to know "which kinds exist" reads this one table, so adding a
kind is one entry here (plus, in the registry, its admission rules).
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from matrixinfer.api.v1 import resources_pb2 as pb

# Every kind's message has the same shape: api_version, kind, metadata, spec, status.
# mypy cannot express "a protobuf message with these fields" without a union, so the
# union below is the type passed around.
Object = (
    pb.Model
    | pb.ModelInfer
    | pb.ModelServer
    | pb.ModelRoute
    | pb.AutoscalingPolicy
    | pb.ApiKey
)

VERSION = "v1alpha1"


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
        return f"{self.group}/{VERSION}"


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


def kind_of(obj: Message) -> Kind:
    """The kind of a resource message; TypeError for any other message."""
    for k in KINDS:
        if isinstance(obj, k.message):
            return k
    raise TypeError(f"not a MatrixInfer resource: {type(obj).__name__}")
