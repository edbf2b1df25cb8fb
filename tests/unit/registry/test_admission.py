"""Admission tables: each bad manifest is refused naming the wrong field; good ones
come back defaulted."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.core.errors import InvalidArgument
from matrixinfer.registry.domain.admission import admit
from matrixinfer.registry.domain.manifest import parse_manifest


def base(kind: str) -> dict[str, Any]:
    docs: dict[str, dict[str, Any]] = {
        "Model": {
            "apiVersion": "registry.matrixinfer.ai/v1alpha1",
            "kind": "Model",
            "metadata": {"name": "m"},
            "spec": {
                "modelSpec": {
                    "modelId": "m",
                    "framework": "onnx",
                    "version": "1.0.0",
                    "source": {"uri": "s3://models/m/"},
                }
            },
        },
        "ModelInfer": {
            "apiVersion": "workload.matrixinfer.ai/v1alpha1",
            "kind": "ModelInfer",
            "metadata": {"name": "m"},
            "spec": {"modelRef": {"name": "m"}},
        },
        "ModelServer": {
            "apiVersion": "networking.matrixinfer.ai/v1alpha1",
            "kind": "ModelServer",
            "metadata": {"name": "m"},
            "spec": {"modelInferRef": "m"},
        },
        "ModelRoute": {
            "apiVersion": "networking.matrixinfer.ai/v1alpha1",
            "kind": "ModelRoute",
            "metadata": {"name": "m"},
            "spec": {"modelName": "m", "rules": [{"targets": [{"modelServer": "m"}]}]},
        },
        "AutoscalingPolicy": {
            "apiVersion": "registry.matrixinfer.ai/v1alpha1",
            "kind": "AutoscalingPolicy",
            "metadata": {"name": "m"},
            "spec": {"targetRef": {"name": "m"}},
        },
    }
    return docs[kind]


def with_value(kind: str, path: str, value: Any) -> dict[str, Any]:
    doc = base(kind)
    node: Any = doc
    parts = path.split(".")
    for part in parts[:-1]:
        key: Any = int(part) if part.isdigit() else part
        if isinstance(node, dict):
            node = node.setdefault(key, {})
        else:
            node = node[key]
    last: Any = int(parts[-1]) if parts[-1].isdigit() else parts[-1]
    node[last] = value
    return doc


def violations(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidArgument) as info:
        admit(doc)
    return [v.field for v in info.value.violations]


@pytest.mark.parametrize(
    "kind", ["Model", "ModelInfer", "ModelServer", "ModelRoute", "AutoscalingPolicy"]
)
def test_minimal_manifests_are_admitted(kind: str) -> None:
    obj = admit(base(kind))
    assert obj.kind == kind
    assert obj.metadata.namespace == "default"


BAD_NAMES = [
    "..",
    "../x",
    "a/../../etc",
    "/abs",
    "..\\x",
    "%2e%2e%2f",
    "．．／",
    "a\x00b",
    "resnet\n",
    "",
    "a" * 64,
    "-lead",
    "trail-",
    "UPPER",
    "ａｂｃ",
    "a_b",
    "a.b",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_hostile_names_are_refused(name: str) -> None:
    assert "metadata.name" in violations(with_value("Model", "metadata.name", name))


@pytest.mark.parametrize(
    ("kind", "path", "value", "field"),
    [
        ("Model", "spec.modelSpec.framework", "caffe", "spec.modelSpec.framework"),
        ("Model", "spec.modelSpec.version", "١٢", "spec.modelSpec.version"),
        ("Model", "spec.modelSpec.version", 1.0, "spec.modelSpec.version"),
        ("Model", "spec.modelSpec.modelId", "a/b", "spec.modelSpec.modelId"),
        (
            "Model",
            "spec.modelSpec.source.uri",
            "file:///etc/../passwd",
            "spec.modelSpec.source.uri",
        ),
        (
            "Model",
            "spec.modelSpec.source.uri",
            "file:relative/path",
            "spec.modelSpec.source.uri",
        ),
        (
            "Model",
            "spec.modelSpec.source.uri",
            "s3://b/../other",
            "spec.modelSpec.source.uri",
        ),
        (
            "Model",
            "spec.modelSpec.source.uri",
            "s3://b/%252e%252e/x",
            "spec.modelSpec.source.uri",
        ),
        (
            "Model",
            "spec.modelSpec.source.uri",
            "S3://bucket/m",
            "spec.modelSpec.source.uri",
        ),
        (
            "Model",
            "spec.modelSpec.source.uri",
            "s3://u:p@bucket/m",
            "spec.modelSpec.source.uri",
        ),
        (
            "Model",
            "spec.modelSpec.source.uri",
            "s3://b/m\r\nX: y",
            "spec.modelSpec.source.uri",
        ),
        (
            "Model",
            "spec.modelSpec.source.uri",
            "s3://b/" + "k" * 70000,
            "spec.modelSpec.source.uri",
        ),
        (
            "Model",
            "spec.modelSpec.source.uri",
            "http://169.254.169.254/latest",
            "spec.modelSpec.source.uri",
        ),
        (
            "Model",
            "spec.modelSpec.source.uri",
            "ftp://host/m",
            "spec.modelSpec.source.uri",
        ),
        (
            "Model",
            "spec.modelSpec.source.sha256",
            "ABC",
            "spec.modelSpec.source.sha256",
        ),
        (
            "Model",
            "spec.modelSpec.inputs",
            [{"name": "x", "dataType": "FLOAT", "dims": [0]}],
            "spec.modelSpec.inputs[0].dataType",
        ),
        (
            "Model",
            "spec.modelSpec.inputs",
            [{"name": "x", "dataType": "FP32", "dims": [-2]}],
            "spec.modelSpec.inputs[0].dims[0]",
        ),
        ("Model", "spec.modelSpec.maxBatchSize", 2**63, "spec.modelSpec.maxBatchSize"),
        (
            "Model",
            "spec.modelSpec.transactionPolicy",
            {"decoupled": True},
            "spec.modelSpec.transactionPolicy.decoupled",
        ),
        ("Model", "spec.modelSpec.unknown", 1, "spec.modelSpec.unknown"),
        ("Model", "spec.modelSpec.model_id", "x", "spec.modelSpec.model_id"),
        ("Model", "metadata.labels", {"a": "x" * 64}, "metadata.labels[a]"),
        (
            "Model",
            "metadata.annotations",
            {"bad key!": "v"},
            "metadata.annotations[bad key!]",
        ),
        ("Model", "metadata.namespace", "Prod", "metadata.namespace"),
        ("ModelInfer", "spec.replicas", -1, "spec.replicas"),
        ("ModelInfer", "spec.replicas", "three", "spec.replicas"),
        ("ModelInfer", "spec.replicas", "1e3", "spec.replicas"),
        ("ModelInfer", "spec.replicas", True, "spec.replicas"),
        ("ModelInfer", "spec.replicas", 2**31, "spec.replicas"),
        ("ModelInfer", "spec.modelRef.name", "", "spec.modelRef.name"),
        ("ModelInfer", "spec.resources.cpu", "lots", "spec.resources.cpu"),
        (
            "ModelInfer",
            "spec.batching.preferredBatchSizes",
            [8, 4],
            "spec.batching.preferredBatchSizes",
        ),
        (
            "ModelInfer",
            "spec.instanceGroups",
            [{"kind": "TPU"}],
            "spec.instanceGroups[0].kind",
        ),
        (
            "ModelInfer",
            "spec.rollout",
            {"maxSurge": 0, "maxUnavailable": 0},
            "spec.rollout",
        ),
        (
            "ModelServer",
            "spec.model",
            "triton_python_backend_shm_region_1",
            "spec.model",
        ),
        (
            "ModelServer",
            "spec.trafficPolicy.loadBalancer.type",
            "RANDOM",
            "spec.trafficPolicy.loadBalancer.type",
        ),
        (
            "ModelServer",
            "spec.trafficPolicy.retry.retryOn",
            ["INVALID_ARGUMENT"],
            "spec.trafficPolicy.retry.retryOn[0]",
        ),
        # Accepted once and then ignored; refused now, naming the field.
        (
            "ModelServer",
            "spec.trafficPolicy.retry.perTryTimeoutMs",
            500,
            "spec.trafficPolicy.retry.perTryTimeoutMs",
        ),
        (
            "ModelServer",
            "spec.workloadSelector",
            {"matchLabels": {"app": "iris"}},
            "spec.workloadSelector",
        ),
        ("ModelServer", "spec.protocol", "http", "spec.protocol"),
        (
            "ModelInfer",
            "spec",
            {
                "modelRef": {"name": "m"},
                "resources": {"gpu": 1},
                "instanceGroups": [{"kind": "GPU", "gpus": [1]}],
            },
            "spec.instanceGroups[0].gpus[0]",
        ),
        (
            "ModelRoute",
            "spec.rules",
            [
                {
                    "targets": [
                        {"modelServer": "a", "weight": 70},
                        {"modelServer": "b", "weight": 20},
                    ]
                }
            ],
            "spec.rules[0].targets",
        ),
        (
            "ModelRoute",
            "spec.rules",
            [{"targets": [{"modelServer": "a", "weight": 101}]}],
            "spec.rules[0].targets[0].weight",
        ),
        (
            "ModelRoute",
            "spec.rules",
            [{"match": {"version": "01"}, "targets": [{"modelServer": "a"}]}],
            "spec.rules[0].match.version",
        ),
        (
            "ModelRoute",
            "spec.rules",
            [
                {
                    "match": {"tenants": ["gold", "a b"]},
                    "targets": [{"modelServer": "a"}],
                }
            ],
            "spec.rules[0].match.tenants[1]",
        ),
        (
            "ModelRoute",
            "spec.rules",
            [{"match": {"version": "٣"}, "targets": [{"modelServer": "a"}]}],
            "spec.rules[0].match.version",
        ),
        (
            "ModelRoute",
            "spec.rules",
            [{"match": {"version": "-1"}, "targets": [{"modelServer": "a"}]}],
            "spec.rules[0].match.version",
        ),
        (
            "ModelRoute",
            "spec.rules",
            [{"match": {"version": str(2**63)}, "targets": [{"modelServer": "a"}]}],
            "spec.rules[0].match.version",
        ),
        (
            "ModelRoute",
            "spec.rules",
            [
                {
                    "match": {"headers": {"x": {"exact": "a", "prefix": "b"}}},
                    "targets": [{"modelServer": "a"}],
                }
            ],
            "spec.rules[0].match.headers[x].prefix",
        ),
        (
            "ModelRoute",
            "spec.rules",
            [
                {
                    "match": {"headers": {"x": {"regex": "("}}},
                    "targets": [{"modelServer": "a"}],
                }
            ],
            "spec.rules[0].match.headers[x].regex",
        ),
        ("ModelRoute", "spec.modelName", "../etc", "spec.modelName"),
        (
            "ModelRoute",
            "spec.rateLimit",
            {"requestsPerSecond": float("nan")},
            "spec.rateLimit.requestsPerSecond",
        ),
        (
            "ModelRoute",
            "spec.rateLimit",
            {"requestsPerSecond": 10, "per": "ip"},
            "spec.rateLimit.per",
        ),
        (
            "AutoscalingPolicy",
            "spec",
            {"targetRef": {"name": "m"}, "minReplicas": 5, "maxReplicas": 3},
            "spec.maxReplicas",
        ),
        (
            "AutoscalingPolicy",
            "spec.metrics",
            [{"type": "Cpu", "target": 1}],
            "spec.metrics[0].type",
        ),
        (
            "AutoscalingPolicy",
            "spec.metrics",
            [{"type": "Concurrency", "target": 0}],
            "spec.metrics[0].target",
        ),
        (
            "AutoscalingPolicy",
            "spec.behavior",
            {"panicWindowSeconds": 120},
            "spec.behavior.panicWindowSeconds",
        ),
        (
            "AutoscalingPolicy",
            "spec.targetRef.kind",
            "Deployment",
            "spec.targetRef.kind",
        ),
        (
            "ModelInfer",
            "spec.batching",
            {"priorityLevels": 2, "defaultPriorityLevel": 3},
            "spec.batching.defaultPriorityLevel",
        ),
        (
            "ModelInfer",
            "spec.batching",
            {"defaultPriorityLevel": 1},
            "spec.batching.defaultPriorityLevel",
        ),
        (
            "ModelRoute",
            "spec.rules",
            [{"targets": [{"modelServer": "s"}], "priority": 101}],
            "spec.rules[0].priority",
        ),
    ],
)
def test_bad_fields_are_named(kind: str, path: str, value: Any, field: str) -> None:
    assert field in violations(with_value(kind, path, value))


def test_every_wrong_field_is_reported_at_once() -> None:
    doc = base("ModelInfer")
    doc["spec"].update({"replicas": -3, "typo": 1})
    doc["metadata"]["name"] = "Bad"
    assert violations(doc) == ["spec.typo"]  # structure first: then nothing is guessed
    doc["spec"].pop("typo")
    assert violations(doc) == ["metadata.name", "spec.replicas"]


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        (
            {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "x"}, "spec": {}},
            "kind",
        ),
        (
            {
                "apiVersion": "registry.matrixinfer.ai/v1alpha1",
                "metadata": {"name": "x"},
            },
            "kind",
        ),
        ({**base("Model"), "apiVersion": "registry.matrixinfer.ai/v1"}, "apiVersion"),
        ({**base("Model"), "metadata": "x"}, "metadata"),
        ({k: v for k, v in base("Model").items() if k != "spec"}, "spec"),
        ({**base("Model"), "extra": 1}, "extra"),
    ],
)
def test_envelope_errors(doc: dict[str, Any], field: str) -> None:
    assert field in violations(doc)


def test_defaults_are_filled_in() -> None:
    infer = admit(base("ModelInfer"))
    assert isinstance(infer, pb.ModelInfer)
    assert infer.spec.replicas == 1
    assert (infer.spec.rollout.max_surge, infer.spec.rollout.max_unavailable) == (1, 0)
    zero = admit(with_value("ModelInfer", "spec.replicas", 0))
    assert isinstance(zero, pb.ModelInfer) and zero.spec.replicas == 0
    route = admit(
        with_value(
            "ModelRoute",
            "spec.rules",
            [
                {
                    "targets": [
                        {"modelServer": "a"},
                        {"modelServer": "b"},
                        {"modelServer": "c"},
                    ]
                }
            ],
        )
    )
    assert isinstance(route, pb.ModelRoute)
    assert [t.weight for t in route.spec.rules[0].targets] == [34, 33, 33]
    assert route.spec.rules[0].name == "rule-0"
    policy = admit(base("AutoscalingPolicy"))
    assert isinstance(policy, pb.AutoscalingPolicy)
    assert (policy.spec.min_replicas, policy.spec.max_replicas) == (1, 10)
    assert [(m.type, m.target) for m in policy.spec.metrics] == [("Concurrency", 10)]
    assert policy.spec.behavior.scale_to_zero_grace_period_seconds == 30


def test_server_owned_metadata_and_status_are_ignored() -> None:
    doc = base("Model")
    doc["metadata"].update(
        {"uid": "forged", "generation": 99, "creationTimestamp": "x"}
    )
    doc["status"] = {"currentRevision": 42}
    obj = admit(doc)
    assert (
        obj.metadata.uid,
        obj.metadata.generation,
        obj.metadata.creation_timestamp,
    ) == ("", 0, "")
    assert not obj.HasField("status")


@pytest.mark.parametrize(
    "text",
    [
        "a: 1\na: 2\n",
        "x: &a [1]\ny: *a\n",
        '{"a": 1, "a": 2}',
        "[" * 5000,
        "a: " + "[" * 100 + "]" * 100,
        '{"a": NaN}',
        "- 1\n- 2\n",
        "",
        "a: b\x00c",
        "x" * (2 << 20),
    ],
)
def test_hostile_manifest_text_is_refused(text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_manifest(text)
    assert info.value.violations[0].field.startswith("manifest")


def test_yaml_and_json_documents_parse_alike() -> None:
    doc = base("Model")
    as_yaml = yaml.safe_dump_all([doc, base("ModelInfer")])
    import json

    as_json = json.dumps([doc, base("ModelInfer")])
    assert parse_manifest(as_yaml) == parse_manifest(as_json)
