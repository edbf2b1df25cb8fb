"""A public model name that differs from the name Triton serves (the canary
walk-through's iris -> iris-v2) is carried by HAProxy itself: gRPC bodies are
renamed by its Lua filter, REST paths by a path rewrite; no Python on the path."""

from __future__ import annotations

import asyncio

import aiohttp
import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2

from tests.integration.conftest import (
    IRIS_REST_BODY,
    Platform,
    iris_manifests,
    start_gateway,
    wait_routed,
)

FLOWERS = """
---
apiVersion: networking.matrixinfer.ai/v1alpha1
kind: ModelRoute
metadata:
  name: flowers
spec:
  modelName: flowers-classifier-with-a-long-public-name
  rules:
    - targets: [{modelServer: iris}]
"""
PUBLIC = "flowers-classifier-with-a-long-public-name"


async def dataplane_requests(url: str, model: str) -> float:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/metrics") as response:
            text = await response.text()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "matrixinfer_gateway_dataplane_requests_total"
                and sample.labels["model"] == model
            ):
                total += sample.value
    return total


async def test_renamed_routes_are_served_natively(platform: Platform) -> None:
    await platform.apply(iris_manifests() + FLOWERS)
    await platform.wait_for(lambda i: i is not None and i.status.ready_replicas == 1)
    app = await start_gateway(platform)
    client = triton_aio.InferenceServerClient(app.address)
    try:
        await wait_routed(app, PUBLIC)
        rows = np.array([[6.7, 3.0, 5.2, 2.3]] * 3, dtype=np.float32)
        for batch in (1, 3):
            tensor = triton_aio.InferInput("X", [batch, 4], "FP32")
            tensor.set_data_from_numpy(rows[:batch])
            result = await client.infer(PUBLIC, [tensor], request_id="r-1")
            assert result.as_numpy("label").reshape(-1).tolist() == [2] * batch
            assert result.get_response().id == "r-1"  # the rest of the body intact
        assert await client.is_model_ready(PUBLIC)
        metadata = await client.get_model_metadata(PUBLIC, as_json=True)
        assert [i["name"] for i in metadata["inputs"]] == ["X"]
        body = IRIS_REST_BODY
        async with aiohttp.ClientSession() as session:
            url = f"{app.http_url}/v2/models/{PUBLIC}/infer"
            async with session.post(url, json=body) as response:
                assert response.status == 200, await response.text()
                assert (await response.json())["outputs"][0]["data"] == [2]
        # HAProxy carried all five calls to the replica (none went through Python).
        for _ in range(40):
            if await dataplane_requests(app.http_url, PUBLIC) == 5:
                break
            await asyncio.sleep(0.1)
        assert await dataplane_requests(app.http_url, PUBLIC) == 5

        # Renames on every HAProxy thread at once (8 connections, 4 calls each at a
        # time): a Lua state shared by threads failed these.
        request = service_pb2.ModelInferRequest(model_name=PUBLIC)
        row = request.inputs.add(name="X", datatype="FP32", shape=[1, 4])
        row.contents.fp32_contents.extend([6.7, 3.0, 5.2, 2.3])
        raw = request.SerializeToString()
        channels = [
            grpc.aio.insecure_channel(
                app.address, options=[("grpc.use_local_subchannel_pool", 1)]
            )
            for _ in range(8)
        ]
        try:

            async def calls(channel: grpc.aio.Channel) -> None:
                call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
                for _ in range(50):
                    await asyncio.gather(*(call(raw, timeout=10) for _ in range(4)))

            await asyncio.gather(*(calls(c) for c in channels))
        finally:
            for channel in channels:
                await channel.close()
    finally:
        await client.close()
        await app.stop(0)
