"""The OpenAPI v3 documents kubectl reads (explain, field validation, patch types)
are generated from the protobuf descriptors."""

from __future__ import annotations

import json

import pytest
from google.protobuf.descriptor import Descriptor

from matrixinfer.api.kinds import Kind
from matrixinfer.registry.kube import openapi
from matrixinfer.registry.kube.resources import SERVED


def every_field(descriptor: Descriptor, seen: set[str]) -> list[tuple[str, str]]:
    """(message, json name) of each field reachable from ``descriptor``."""
    if descriptor.full_name in seen or descriptor.GetOptions().map_entry:
        return []
    seen.add(descriptor.full_name)
    out = []
    for field in descriptor.fields:
        out.append((descriptor.full_name, field.json_name))
        if field.message_type is not None:
            out += every_field(field.message_type, seen)
    return out


@pytest.mark.parametrize("kind", SERVED, ids=lambda k: k.name)
def test_every_field_of_the_kind_is_in_its_schema(kind: Kind) -> None:
    doc = openapi.document(kind.group)
    schemas = doc["components"]["schemas"]

    fields = every_field(kind.message.DESCRIPTOR, set())

    missing = [
        (message, name)
        for message, name in fields
        if name not in schemas[message]["properties"]
    ]
    assert missing == []
    top = schemas[kind.message.DESCRIPTOR.full_name]
    assert top["x-kubernetes-group-version-kind"] == [
        {"group": kind.group, "version": "v1alpha1", "kind": kind.name}
    ]


@pytest.mark.parametrize("kind", SERVED, ids=lambda k: k.name)
def test_patch_declares_field_validation_and_no_strategic_merge(kind: Kind) -> None:
    doc = openapi.document(kind.group)
    path = (
        f"/apis/{kind.group}/v1alpha1/namespaces/{{namespace}}/{kind.plural}/{{name}}"
    )

    patch = doc["paths"][path]["patch"]

    assert patch["x-kubernetes-group-version-kind"]["kind"] == kind.name
    assert "fieldValidation" in [p["name"] for p in patch["parameters"]]
    assert set(patch["requestBody"]["content"]) == {
        "application/merge-patch+json",
        "application/apply-patch+yaml",
    }


def test_64_bit_integers_are_numbers() -> None:
    doc = openapi.document("workload.matrixinfer.ai")
    batching = doc["components"]["schemas"]["matrixinfer.v1.Batching"]

    assert batching["properties"]["maxQueueDelayMicroseconds"] == {
        "type": "integer",
        "format": "int64",
    }


def test_the_index_points_at_each_document_by_hash() -> None:
    docs = openapi.documents()

    index = openapi.root(docs)

    assert set(index["paths"]) == {
        "apis/registry.matrixinfer.ai/v1alpha1",
        "apis/workload.matrixinfer.ai/v1alpha1",
        "apis/networking.matrixinfer.ai/v1alpha1",
    }
    for path, body in docs.items():
        assert index["paths"][path]["serverRelativeURL"].startswith(
            f"/openapi/v3/{path}?hash="
        )
        assert json.loads(body)["openapi"] == "3.0.0"
