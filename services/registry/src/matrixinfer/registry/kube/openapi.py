"""OpenAPI v3 documents of the served group/versions, generated from the protobuf
descriptors of the kinds (what ``kubectl explain`` reads, and what kubectl checks
to learn that the server validates fields and dry-runs itself)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from matrixinfer.api.kinds import VERSION, Kind
from matrixinfer.httpapi.jsonbody import INT64_TYPES
from matrixinfer.httpapi.openapi import SchemaBuilder, ref
from matrixinfer.registry.kube.resources import GROUPS

GVK = "x-kubernetes-group-version-kind"

#: The PATCH bodies the server takes; strategic merge patch is deliberately absent:
#: as for custom resources, kubectl then computes a JSON merge patch.
PATCH_TYPES = ("application/merge-patch+json", "application/apply-patch+yaml")

_QUERY = {
    "dryRun": "All: admit and default, store nothing.",
    "fieldManager": "Accepted and ignored (one writer's view: the registry's).",
    "fieldValidation": "Accepted; unknown fields are always refused (Strict).",
}


class KubeSchemas(SchemaBuilder):
    """Kubernetes' JSON form: 64-bit integers and doubles as plain numbers."""

    def single(self, field: FieldDescriptor) -> dict[str, Any]:
        if field.type in INT64_TYPES:
            return {"type": "integer", "format": "int64"}
        if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            return {"type": "number", "format": "double"}
        return super().single(field)


def _gvk(kind: Kind) -> dict[str, str]:
    return {"group": kind.group, "version": VERSION, "kind": kind.name}


def _params(names: tuple[str, ...]) -> list[dict[str, Any]]:
    return [
        {
            "name": n,
            "in": "query",
            "description": _QUERY.get(n, ""),
            "schema": {"type": "string"},
        }
        for n in names
    ]


def _operation(
    kind: Kind,
    action: str,
    schema: dict[str, Any],
    query: tuple[str, ...] = (),
    body: tuple[str, ...] = (),
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": f"{action}{kind.name}",
        "x-kubernetes-action": action,
        GVK: _gvk(kind),
        "parameters": _params(query),
        "responses": {
            "200": {
                "description": "OK",
                "content": {"application/json": {"schema": schema}},
            }
        },
    }
    if body:
        op["requestBody"] = {"content": {t: {"schema": schema} for t in body}}
    return op


def document(group: str) -> dict[str, Any]:
    """The OpenAPI v3 document of ``group``/v1alpha1."""
    schemas: dict[str, Any] = {}
    builder = KubeSchemas(schemas)
    paths: dict[str, Any] = {}
    for kind in GROUPS[group]:
        name = builder.component(kind.message.DESCRIPTOR)
        schemas[name][GVK] = [_gvk(kind)]
        schemas[name]["description"] = (
            f"{kind.name} ({kind.group}/{VERSION}), stored by the MatrixInfer registry."
        )
        one = ref(name)
        listing = {
            "type": "object",
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"type": "object"},
                "items": {"type": "array", "items": one},
            },
        }
        base = f"/apis/{group}/{VERSION}/namespaces/{{namespace}}/{kind.plural}"
        paths[base] = {
            "get": _operation(
                kind, "list", listing, ("labelSelector", "limit", "continue", "watch")
            ),
            "post": _operation(
                kind,
                "post",
                one,
                ("dryRun", "fieldManager", "fieldValidation"),
                ("application/json",),
            ),
        }
        writes = ("dryRun", "fieldManager", "fieldValidation")
        for path in (f"{base}/{{name}}", f"{base}/{{name}}/status"):
            paths[path] = {
                "get": _operation(kind, "get", one),
                "put": _operation(kind, "put", one, writes, ("application/json",)),
                "patch": _operation(
                    kind, "patch", one, (*writes, "force"), PATCH_TYPES
                ),
            }
        paths[f"{base}/{{name}}"]["delete"] = _operation(
            kind, "delete", one, ("dryRun",)
        )
    return {
        "openapi": "3.0.0",
        "info": {"title": f"MatrixInfer {group}", "version": VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def documents() -> dict[str, bytes]:
    """``apis/{group}/{version}`` → its document, serialized once."""
    return {
        f"apis/{group}/{VERSION}": json.dumps(document(group)).encode()
        for group in GROUPS
    }


def root(docs: dict[str, bytes]) -> dict[str, Any]:
    """The /openapi/v3 index: each document's path with its content hash."""
    return {
        "paths": {
            path: {
                "serverRelativeURL": (
                    f"/openapi/v3/{path}?hash={hashlib.sha256(body).hexdigest()[:32]}"
                )
            }
            for path, body in docs.items()
        }
    }
