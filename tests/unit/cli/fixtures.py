"""Resources as the registry returns them (with server-set fields and status), at
fixed times, and an in-memory registry for the CLI's read commands."""

from __future__ import annotations

import datetime
from typing import Any

import yaml
from google.protobuf import json_format

from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.cli.client import CliError

NOW = datetime.datetime(2025, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)

OBJECTS = """
- apiVersion: registry.matrixinfer.ai/v1alpha1
  kind: Model
  metadata:
    name: iris
    namespace: default
    labels: {app: iris}
    uid: 0b7c3a52-0000-4000-8000-000000000001
    resourceVersion: "41"
    generation: "3"
    creationTimestamp: "2025-02-27T09:30:00Z"
  spec:
    modelSpec:
      modelId: iris-logistic-regression
      framework: onnx
      version: "3"
      source: {uri: "file:///models/iris-3.onnx"}
  status:
    currentRevision: "3"
    conditions:
      - type: Ready
        status: "True"
        reason: RevisionStored
        message: revision 3 stored
        lastTransitionTime: "2025-03-01T11:15:00Z"
- apiVersion: registry.matrixinfer.ai/v1alpha1
  kind: Model
  metadata:
    name: resnet
    namespace: default
    uid: 0b7c3a52-0000-4000-8000-000000000002
    resourceVersion: "12"
    generation: "1"
    creationTimestamp: "2025-03-01T11:59:15Z"
  spec:
    modelSpec:
      modelId: resnet50
      framework: pytorch
      version: "1"
      source: {uri: "s3://models/resnet50.pt"}
- apiVersion: workload.matrixinfer.ai/v1alpha1
  kind: ModelInfer
  metadata:
    name: iris
    namespace: default
    labels: {app: iris}
    uid: 0b7c3a52-0000-4000-8000-000000000003
    resourceVersion: "57"
    generation: "2"
    creationTimestamp: "2025-03-01T08:00:00Z"
    finalizers: [matrixinfer.ai/replicas]
  spec:
    modelRef: {name: iris}
    replicas: 2
    batching: {maxBatchSize: 64, preferredBatchSizes: [16, 32]}
    rollout: {maxSurge: 1, maxUnavailable: 0}
  status:
    replicas: 2
    readyReplicas: 1
    updatedReplicas: 2
    desiredReplicas: 2
    observedGeneration: "2"
    modelRevision: "3"
    endpoints:
      - {name: default-iris-r3-4, address: 127.0.0.1, grpcPort: 40001, httpPort: 40002,
         metricsPort: 40003, revision: "3", ready: true}
      - {name: default-iris-r3-5, address: 127.0.0.1, grpcPort: 40011, httpPort: 40012,
         metricsPort: 40013, revision: "3", restarts: 2}
    conditions:
      - {type: Available, status: "True", reason: MinimumReplicasAvailable,
         message: 1 of 2 ready, lastTransitionTime: "2025-03-01T11:58:00Z",
         observedGeneration: "2"}
      - {type: Progressing, status: "True", reason: Rolling,
         message: "2 of 2 updated, 1 ready", lastTransitionTime: "2025-03-01T11:40:00Z",
         observedGeneration: "2"}
      - {type: Degraded, status: "True", reason: ReplicaFailed,
         message: "default-iris-r3-5: tritonserver exited with code 1",
         lastTransitionTime: "2025-03-01T11:59:30Z", observedGeneration: "2"}
- apiVersion: workload.matrixinfer.ai/v1alpha1
  kind: ModelInfer
  metadata:
    name: resnet
    namespace: default
    uid: 0b7c3a52-0000-4000-8000-000000000004
    resourceVersion: "13"
    generation: "1"
    creationTimestamp: "2025-03-01T11:59:20Z"
  spec:
    modelRef: {name: resnet, revision: "1"}
    replicas: 1
- apiVersion: networking.matrixinfer.ai/v1alpha1
  kind: ModelRoute
  metadata:
    name: iris
    namespace: default
    resourceVersion: "20"
    generation: "1"
    creationTimestamp: "2025-02-01T00:00:00Z"
  spec:
    modelName: iris
    rules:
      - name: canary
        match: {headers: {x-canary: {exact: "1"}}}
        targets: [{modelServer: iris-v2, weight: 100}]
      - targets: [{modelServer: iris, weight: 90}, {modelServer: iris-v2, weight: 10}]
    rateLimit: {requestsPerSecond: 50, burst: 100, per: tenant}
- apiVersion: registry.matrixinfer.ai/v1alpha1
  kind: AutoscalingPolicy
  metadata:
    name: iris
    namespace: default
    resourceVersion: "22"
    generation: "1"
    creationTimestamp: "2025-02-20T00:00:00Z"
  spec:
    targetRef: {kind: ModelInfer, name: iris}
    minReplicas: 0
    maxReplicas: 4
    metrics: [{type: Concurrency, target: 8}]
  status: {currentReplicas: 2, desiredReplicas: 3, mode: Panic}
- apiVersion: registry.matrixinfer.ai/v1alpha1
  kind: AutoscalingPolicy
  metadata:
    name: resnet
    namespace: default
    resourceVersion: "23"
    generation: "1"
    creationTimestamp: "2025-03-01T10:00:00Z"
  spec:
    targetRef: {kind: ModelInfer, name: resnet}
    minReplicas: 1
    maxReplicas: 2
- apiVersion: security.matrixinfer.ai/v1alpha1
  kind: ApiKey
  metadata:
    name: ak-3f9a1c
    namespace: default
    resourceVersion: "30"
    generation: "1"
    creationTimestamp: "2025-01-01T00:00:00Z"
  spec:
    subject: ci-bot
    scopes: ["infer:*"]
    tenant: team-a
    hash: sha256:deadbeef
    expiresAt: "2026-01-01T00:00:00Z"
- apiVersion: security.matrixinfer.ai/v1alpha1
  kind: ApiKey
  metadata:
    name: ak-77e0b2
    namespace: default
    resourceVersion: "31"
    generation: "2"
    creationTimestamp: "2025-02-28T12:00:00Z"
  spec:
    subject: alice
    scopes: ["infer:iris", admin]
    hash: sha256:cafebabe
    revoked: true
"""

FIELDS = {
    "Model": "model",
    "ModelInfer": "model_infer",
    "ModelServer": "model_server",
    "ModelRoute": "model_route",
    "AutoscalingPolicy": "autoscaling_policy",
    "ApiKey": "api_key",
}


def resources() -> list[pb.Resource]:
    out = []
    for obj in yaml.safe_load(OBJECTS):
        resource = pb.Resource()
        json_format.ParseDict(obj, getattr(resource, FIELDS[obj["kind"]]))
        out.append(resource)
    return out


def revisions() -> list[rpb.ModelRevision]:
    out = []
    for number, day in ((1, 20), (2, 25), (3, 27)):
        revision = rpb.ModelRevision(revision=number)
        json_format.ParseDict(
            {
                "spec": {
                    "modelSpec": {
                        "version": str(number),
                        "source": {"uri": f"file:///models/iris-{number}.onnx"},
                    }
                }
            },
            revision.model,
        )
        revision.created.FromDatetime(datetime.datetime(2025, 2, day, 9, 30))
        out.append(revision)
    return out


class FakeRegistry:
    """The registry's read side over a fixed list."""

    def __init__(self) -> None:
        self.items = resources()

    def _matches(self, resource: pb.Resource, kind: str, namespace: str) -> bool:
        obj: Any = getattr(resource, resource.WhichOneof("object") or "")
        return resource.WhichOneof("object") == FIELDS[kind] and (
            not namespace or obj.metadata.namespace == namespace
        )

    def get(self, kind: str, namespace: str, name: str) -> pb.Resource:
        for r in self.items:
            obj: Any = getattr(r, r.WhichOneof("object") or "")
            if self._matches(r, kind, namespace) and obj.metadata.name == name:
                return r
        raise CliError(f"error (NOT_FOUND): {kind} {namespace}/{name} not found")

    def list_objects(
        self, kind: str, namespace: str, selector: str = ""
    ) -> tuple[list[pb.Resource], str]:
        return [r for r in self.items if self._matches(r, kind, namespace)], "99"

    def list_revisions(self, namespace: str, name: str) -> list[rpb.ModelRevision]:
        return revisions() if name == "iris" else []
