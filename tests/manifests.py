"""Small manifests the tests build on."""

from __future__ import annotations

MODEL = """
apiVersion: registry.matrixinfer.ai/v1alpha1
kind: Model
metadata:
  name: {name}
  labels: {{app: demo, tier: {tier}}}
spec:
  modelSpec:
    modelId: {name}
    framework: onnx
    version: "{version}"
    source: {{uri: "s3://models/{name}/{version}/"}}
"""

STACK = """
apiVersion: registry.matrixinfer.ai/v1alpha1
kind: Model
metadata: {name: iris}
spec:
  modelSpec:
    modelId: iris
    framework: onnx
    version: "1"
    source: {uri: "file:///models/iris"}
---
apiVersion: workload.matrixinfer.ai/v1alpha1
kind: ModelInfer
metadata: {name: iris}
spec:
  modelRef: {name: iris}
  replicas: 2
---
apiVersion: networking.matrixinfer.ai/v1alpha1
kind: ModelServer
metadata: {name: iris}
spec:
  modelInferRef: iris
---
apiVersion: networking.matrixinfer.ai/v1alpha1
kind: ModelRoute
metadata: {name: iris}
spec:
  modelName: iris
  rules:
    - targets: [{modelServer: iris}]
---
apiVersion: registry.matrixinfer.ai/v1alpha1
kind: AutoscalingPolicy
metadata: {name: iris}
spec:
  targetRef: {name: iris}
  minReplicas: 0
  maxReplicas: 4
"""


def model(name: str = "m", version: str = "1", tier: str = "cpu") -> str:
    return MODEL.format(name=name, version=version, tier=tier)
