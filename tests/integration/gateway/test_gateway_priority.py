"""A ModelRoute rule's `priority` reaches Triton with every request it takes, through
HAProxy (gRPC: written into the message by its Lua filter) and through the gateway's
Python (REST infer and generate): a paying tenant's requests overtake a batch job's
queued ones, even when the tenant's client names a low priority itself.

The model is deliberately slow (an ONNX graph of 300 products of 256×512 by
512×512, built here; ≈ 0.1–0.2 s per request), served by one instance one request
at a time, with two priority levels (requests that name none are at the low one)."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator

import aiohttp
import numpy as np
import onnx
import pytest_asyncio
import tritonclient.grpc.aio as triton_aio
from onnx import TensorProto, helper, numpy_helper

from matrixinfer.gateway.main import GatewayApp
from tests.integration.conftest import Platform, start_gateway, wait_routed

PRODUCTS = 300
STEP_S = 0.05  # well below one execution (≈ 0.1–0.2 s here)


def slow_onnx(path: pathlib.Path) -> None:
    """Y[b,1] = the row sums of X[b,4] @ 0.01 (4×512): 20.48 for ones, after
    PRODUCTS matrix products that depend on X (so ONNX Runtime cannot fold them
    away) and add nothing."""
    init = [
        numpy_helper.from_array(np.full((4, 512), 0.01, np.float32), "W1"),
        numpy_helper.from_array(np.eye(512, dtype=np.float32), "I"),
        numpy_helper.from_array(np.full((256, 512), 1e-3, np.float32), "A"),
        numpy_helper.from_array(np.zeros((1,), np.float32), "Z"),
        numpy_helper.from_array(np.array([1], np.int64), "axis"),
    ]
    nodes = [
        helper.make_node("MatMul", ["X", "W1"], ["h"]),
        helper.make_node("ReduceSum", ["h"], ["s"], keepdims=0),
        helper.make_node("Add", ["A", "s"], ["t0"]),
    ]
    nodes += [
        helper.make_node("MatMul", [f"t{i}", "I"], [f"t{i + 1}"])
        for i in range(PRODUCTS)
    ]
    nodes += [
        helper.make_node("ReduceSum", [f"t{PRODUCTS}"], ["u"], keepdims=0),
        helper.make_node("Mul", ["u", "Z"], ["zero"]),
        helper.make_node("ReduceSum", ["h", "axis"], ["rows"], keepdims=1),
        helper.make_node("Add", ["rows", "zero"], ["Y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 1])],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


MANIFESTS = """
apiVersion: registry.matrixinfer.ai/v1alpha1
kind: Model
metadata: {{name: slow}}
spec:
  modelSpec:
    modelId: slow
    framework: onnx
    version: "1"
    source: {{uri: "file://{path}"}}
---
apiVersion: workload.matrixinfer.ai/v1alpha1
kind: ModelInfer
metadata: {{name: slow}}
spec:
  modelRef: {{name: slow}}
  replicas: 1
  batching: {{maxBatchSize: 1, priorityLevels: 2, defaultPriorityLevel: 2}}
  instanceGroups: [{{kind: CPU, count: 1}}]
---
apiVersion: networking.matrixinfer.ai/v1alpha1
kind: ModelServer
metadata: {{name: slow}}
spec: {{modelInferRef: slow, model: slow}}
---
apiVersion: networking.matrixinfer.ai/v1alpha1
kind: ModelRoute
metadata: {{name: slow}}
spec:
  modelName: slow
  rules:
    - name: paying
      match: {{headers: {{x-tenant: {{exact: gold}}}}}}
      targets: [{{modelServer: slow}}]
      priority: 1
    - targets: [{{modelServer: slow}}]
"""


@pytest_asyncio.fixture
async def gateway(
    platform: Platform, tmp_path: pathlib.Path
) -> AsyncIterator[GatewayApp]:
    slow_onnx(tmp_path / "slow.onnx")
    app = await start_gateway(platform)
    try:
        await platform.apply(MANIFESTS.format(path=tmp_path / "slow.onnx"))
        await platform.wait_for(
            lambda i: i is not None and i.status.ready_replicas == 1, 90, name="slow"
        )
        await wait_routed(app, "slow")
        yield app
    finally:
        await app.stop(0)


async def test_a_paying_tenant_overtakes_queued_batch_requests(
    gateway: GatewayApp,
) -> None:
    client = triton_aio.InferenceServerClient(gateway.address)
    session = aiohttp.ClientSession()
    finished: list[str] = []

    async def grpc_call(label: str, headers: dict[str, str], priority: int = 0) -> None:
        tensor = triton_aio.InferInput("X", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
        result = await client.infer(
            "slow", [tensor], headers=headers, priority=priority, client_timeout=60
        )
        out = result.as_numpy("Y")
        assert out is not None and abs(float(out[0][0]) - 20.48) < 1e-3
        finished.append(label)

    async def rest_call(label: str, headers: dict[str, str]) -> None:
        # REST bodies of a priority rule go through the gateway's Python, which
        # sets the parameter.
        body = {
            "inputs": [
                {"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}
            ]
        }
        async with session.post(
            f"{gateway.http_url}/v2/models/slow/infer", json=body, headers=headers
        ) as response:
            assert response.status == 200
            answer = await response.json()
        assert abs(answer["outputs"][0]["data"][0] - 20.48) < 1e-3
        finished.append(label)

    async def generate_call(label: str, headers: dict[str, str]) -> None:
        # Triton's generate extension: the same path, one streamed request.
        async with session.post(
            f"{gateway.http_url}/v2/models/slow/generate",
            json={"X": [1, 1, 1, 1]},
            headers=headers,
        ) as response:
            assert response.status == 200
            answer = await response.json()
        assert abs(answer["Y"] - 20.48) < 1e-3
        finished.append(label)

    try:
        tasks = [asyncio.create_task(grpc_call("batch", {}))]  # runs at once
        await asyncio.sleep(STEP_S)
        tasks += [asyncio.create_task(grpc_call("batch", {})) for _ in range(4)]
        await asyncio.sleep(STEP_S)  # four batch requests queued at the low level
        gold = {"x-tenant": "gold"}
        # The paying tenant's gRPC client asks for the low level itself: the rule's
        # level replaces it.
        tasks.append(asyncio.create_task(grpc_call("gold", gold, priority=2)))
        tasks.append(asyncio.create_task(rest_call("gold", gold)))
        tasks.append(asyncio.create_task(generate_call("gold", gold)))
        await asyncio.gather(*tasks)
    finally:
        await client.close()
        await session.close()
    assert finished == ["batch"] + ["gold"] * 3 + ["batch"] * 4
