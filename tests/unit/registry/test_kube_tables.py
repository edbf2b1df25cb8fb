"""The Table answers of the registry's Kubernetes API use the CLI's columns: one
table of columns (matrixinfer.api.columns), the same headers and cells."""

from __future__ import annotations

import datetime

import pytest

from matrixinfer.api.envelope import wrap
from matrixinfer.api.kinds import BY_NAME
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.cli import render
from matrixinfer.registry.kube.resources import SERVED, proto_json, table, to_kube

NOW = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


def infer() -> pb.Resource:
    obj = pb.ModelInfer(
        api_version="workload.matrixinfer.ai/v1alpha1", kind="ModelInfer"
    )
    obj.metadata.name = "iris"
    obj.metadata.namespace = "default"
    obj.metadata.generation = 3
    obj.metadata.creation_timestamp = "2026-01-02T02:59:05Z"
    obj.spec.model_ref.name = "iris"
    obj.spec.replicas = 2
    obj.spec.batching.max_queue_delay_microseconds = 200
    obj.status.observed_generation = 3
    obj.status.desired_replicas = 2
    obj.status.ready_replicas = 1
    obj.status.model_revision = 4
    return wrap(obj)


@pytest.mark.parametrize("kind", [k.name for k in SERVED])
def test_column_definitions_are_the_cli_columns(kind: str) -> None:
    answer = table(BY_NAME[kind], [], NOW, "None", {})

    names = [c["name"] for c in answer["columnDefinitions"]]
    priorities = [c["priority"] for c in answer["columnDefinitions"]]
    default = [h for h, _ in render.columns(kind, False, False)]
    wide = [h for h, _ in render.columns(kind, True, False)]
    assert names == wide
    assert priorities == [0] * len(default) + [1] * (len(wide) - len(default))


def test_cells_are_what_the_cli_prints() -> None:
    resource = infer()

    answer = table(BY_NAME["ModelInfer"], [resource], NOW, "Metadata", {})

    cli_cells = render.table_rows(
        render.columns("ModelInfer", True, False), [proto_json(resource)], NOW
    )
    assert [row["cells"] for row in answer["rows"]] == cli_cells
    assert answer["rows"][0]["cells"][:5] == ["iris", "iris", "1/2", "4", "5m"]
    assert answer["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    assert answer["rows"][0]["object"]["metadata"]["name"] == "iris"


def test_kubernetes_form_has_64_bit_integers_as_numbers() -> None:
    shown = to_kube(infer())

    assert shown["metadata"]["generation"] == 3
    assert shown["spec"]["batching"]["maxQueueDelayMicroseconds"] == 200
    assert shown["status"]["observedGeneration"] == 3
    assert proto_json(infer())["metadata"]["generation"] == "3"
