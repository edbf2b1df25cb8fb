"""The kinds served as Kubernetes resources, and objects in Kubernetes' JSON form.

The form is protobuf's JSON mapping (the one manifests use) with one change: 64-bit
integers are JSON numbers, as in every Kubernetes API, not strings. Admission
accepts both, so what ``kubectl get -o yaml`` prints applies again.
"""

from __future__ import annotations

import datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from matrixinfer.api.columns import COLUMNS
from matrixinfer.api.envelope import unwrap
from matrixinfer.api.kinds import KINDS, VERSION, Kind
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.httpapi.jsonbody import INT64_TYPES

#: Every kind but ApiKey: keys are created through CreateApiKey only (it shows the
#: secret once), so they are not offered for create/update here.
SERVED: tuple[Kind, ...] = tuple(k for k in KINDS if k.name != "ApiKey")

SHORT_NAMES: dict[str, list[str]] = {
    "Model": [],
    "ModelInfer": ["mi"],
    "ModelServer": ["ms"],
    "ModelRoute": ["mr"],
    "AutoscalingPolicy": ["asp"],
}

#: `kubectl get matrixinfer` lists every served kind.
CATEGORY = "matrixinfer"

#: group → its kinds, in the kind table's order.
GROUPS: dict[str, list[Kind]] = {}
for _kind in SERVED:
    GROUPS.setdefault(_kind.group, []).append(_kind)

BY_RESOURCE: dict[tuple[str, str], Kind] = {(k.group, k.plural): k for k in SERVED}


RESOURCE_VERBS = ("create", "delete", "get", "list", "patch", "update", "watch")
STATUS_VERBS = ("get", "patch", "update")


def group_version(kind: Kind) -> str:
    return f"{kind.group}/{VERSION}"


def _numbers(value: dict[str, Any], descriptor: Descriptor) -> None:
    """64-bit integers (strings in protobuf's JSON) as numbers, in place."""
    for field in descriptor.fields:
        key = field.json_name
        if key not in value:
            continue
        item = value[key]
        message = field.message_type
        if message is not None and message.GetOptions().map_entry:
            value_field = message.fields_by_name["value"]
            for k, v in item.items():
                item[k] = _single(v, value_field)
        elif field.is_repeated:
            value[key] = [_single(v, field) for v in item]
        else:
            value[key] = _single(item, field)


def _single(value: Any, field: FieldDescriptor) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE and isinstance(value, dict):
        assert field.message_type is not None
        _numbers(value, field.message_type)
        return value
    if field.type in INT64_TYPES and isinstance(value, str):
        return int(value)
    return value


def proto_json(resource: pb.Resource) -> dict[str, Any]:
    """The object as the CLI sees it (protobuf's JSON mapping): the form the shared
    columns read."""
    obj = unwrap(resource)
    assert obj is not None
    out: dict[str, Any] = json_format.MessageToDict(obj)
    return out


def to_kube(resource: pb.Resource) -> dict[str, Any]:
    obj = unwrap(resource)
    assert obj is not None
    out: dict[str, Any] = json_format.MessageToDict(obj)
    _numbers(out, obj.DESCRIPTOR)
    return out


# ------------------------------------------------------------------ tables


def column_definitions(kind: Kind) -> list[dict[str, Any]]:
    """The columns of ``matrixinfer get`` (priority 1: those of ``-o wide``)."""
    base, extra = COLUMNS[kind.name]
    out = []
    for priority, columns in ((0, base), (1, extra)):
        for header, _ in columns:
            out.append(
                {
                    "name": header,
                    "type": "string",
                    "format": "name" if header == "NAME" else "",
                    "description": f"{header} as `matrixinfer get` shows it",
                    "priority": priority,
                }
            )
    return out


def table_row(
    kind: Kind,
    resource: pb.Resource,
    now: datetime.datetime,
    include_object: str,
) -> dict[str, Any]:
    base, extra = COLUMNS[kind.name]
    shown = proto_json(resource)
    row: dict[str, Any] = {"cells": [fn(shown, now) for _, fn in (*base, *extra)]}
    if include_object == "Object":
        row["object"] = to_kube(resource)
    elif include_object == "Metadata":
        row["object"] = {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": to_kube(resource).get("metadata", {}),
        }
    return row


def table(
    kind: Kind,
    resources: list[pb.Resource],
    now: datetime.datetime,
    include_object: str,
    metadata: dict[str, Any],
) -> dict[str, Any]:
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": column_definitions(kind),
        "rows": [table_row(kind, r, now, include_object) for r in resources],
    }
