"""Mirrored traffic reaches the shadow replicas; callers only see the primary's
answers. Mirrored rules are carried by the gateway's slow path behind HAProxy, which
passes the caller's traceparent on: the gateway's span continues the caller's
trace."""

from __future__ import annotations

import asyncio

import numpy as np
import tritonclient.grpc.aio as triton_aio
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.gateway.main import GatewayApp
from tests.integration.conftest import Platform, iris_manifests, start_gateway

SHADOW = """
---
apiVersion: workload.matrixinfer.ai/v1alpha1
kind: ModelInfer
metadata: {name: shadow}
spec:
  modelRef: {name: iris}
  replicas: 1
---
apiVersion: networking.matrixinfer.ai/v1alpha1
kind: ModelServer
metadata: {name: shadow}
spec:
  modelInferRef: shadow
  model: iris
"""
CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
MIRRORED_ROUTE = """  rules:
    - targets: [{modelServer: iris}]
      mirror: {modelServer: shadow, percent: 100}"""


def ready(infer: pb.ModelInfer | None) -> bool:
    return infer is not None and infer.status.ready_replicas == 1


async def inference_count(endpoint: pb.Endpoint) -> int:
    client = triton_aio.InferenceServerClient(
        f"{endpoint.address}:{endpoint.grpc_port}"
    )
    try:
        stats = await client.get_inference_statistics("iris", as_json=True)
        return int(
            stats["model_stats"][0]["inference_stats"]["success"].get("count", 0)
        )
    finally:
        await client.close()


async def deploy_mirrored(platform: Platform) -> tuple[pb.ModelInfer, pb.ModelInfer]:
    """iris, mirrored to the shadow ModelInfer; both ready."""
    manifests = iris_manifests().replace(
        "  rules:\n    - targets: [{modelServer: iris}]", MIRRORED_ROUTE
    )
    await platform.apply(manifests + SHADOW)
    primary = await platform.wait_for(ready, 90)
    shadow = await platform.wait_for(ready, 90, name="shadow")
    assert primary is not None and shadow is not None
    return primary, shadow


async def wait_mirror_routed(app: GatewayApp) -> None:
    """Until the gateway routes iris to its replica and mirrors to the shadow's."""
    for _ in range(100):
        route = app.routes.table.routes.get("iris")
        rule = route.rules[0] if route else None
        if (
            rule
            and rule.targets[0][0].replicas
            and rule.mirror
            and rule.mirror[0].replicas
        ):
            return
        await asyncio.sleep(0.05)


async def test_mirror_copies_traffic_to_the_shadow(platform: Platform) -> None:
    primary, shadow = await deploy_mirrored(platform)
    exporter = InMemorySpanExporter()
    app = await start_gateway(platform, exporter)
    client = triton_aio.InferenceServerClient(app.address)
    try:
        await wait_mirror_routed(app)
        # Counted from here on: warmup requests count as inferences too.
        shadow_before = await inference_count(shadow.status.endpoints[0])
        primary_before = await inference_count(primary.status.endpoints[0])
        tensor = triton_aio.InferInput("X", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.array([[6.7, 3.0, 5.2, 2.3]], dtype=np.float32))
        for _ in range(20):
            result = await client.infer(
                "iris", [tensor], headers={"traceparent": CALLER}
            )
            labels = result.as_numpy("label")
            assert labels is not None and labels.reshape(-1).tolist() == [2]
        for _ in range(100):  # mirrored copies are sent in the background
            if await inference_count(shadow.status.endpoints[0]) - shadow_before == 20:
                break
            await asyncio.sleep(0.05)
        assert await inference_count(shadow.status.endpoints[0]) - shadow_before == 20
        assert await inference_count(primary.status.endpoints[0]) - primary_before == 20
        spans = [
            s for s in exporter.get_finished_spans() if s.name == "ModelInfer iris"
        ]
        assert len(spans) == 20
        for span in spans:  # HAProxy passed the caller's traceparent through
            assert format(span.context.trace_id, "032x") == CALLER.split("-")[1]
            assert span.parent is not None
            assert format(span.parent.span_id, "016x") == CALLER.split("-")[2]
    finally:
        await client.close()
        await app.stop(0)
