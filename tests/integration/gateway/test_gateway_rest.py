"""KServe v2 over HTTP through the gateway: unchanged tritonclient.http (binary
tensors, the client's default, and JSON), plain JSON as curl would send it, error
codes, health and metrics."""

from __future__ import annotations

import asyncio

import aiohttp
import numpy as np
import pytest
import pytest_asyncio
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from matrixinfer.gateway.main import GatewayApp

ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)


@pytest_asyncio.fixture
async def gateway(iris_gateway: GatewayApp) -> GatewayApp:
    return iris_gateway


def http_calls(
    url: str, binary: bool
) -> tuple[list[int], list[float], dict[str, object]]:
    client = triton_http.InferenceServerClient(url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("iris")
        metadata = client.get_model_metadata("iris")
        tensor = triton_http.InferInput("X", list(ROWS.shape), "FP32")
        tensor.set_data_from_numpy(ROWS, binary_data=binary)
        outputs = [
            triton_http.InferRequestedOutput("label", binary_data=binary),
            triton_http.InferRequestedOutput("probabilities", binary_data=binary),
        ]
        result = client.infer("iris", [tensor], outputs=outputs)
        labels = result.as_numpy("label")
        probabilities = result.as_numpy("probabilities")
        assert labels is not None and probabilities is not None
        return labels.reshape(-1).tolist(), probabilities.sum(axis=1).tolist(), metadata
    finally:
        client.close()


@pytest.mark.parametrize("binary", [True, False])
async def test_tritonclient_http_through_the_gateway(
    gateway: GatewayApp, binary: bool
) -> None:
    labels, sums, metadata = await asyncio.to_thread(
        http_calls, gateway.http_url, binary
    )
    assert labels == [0, 2]
    assert all(abs(s - 1.0) < 1e-4 for s in sums)
    assert metadata["name"] == "iris"
    # Numbers, as Triton's own HTTP API gives them (not proto JSON's strings).
    inputs = metadata["inputs"]
    assert isinstance(inputs, list) and inputs[0]["shape"] == [-1, 4]


async def test_plain_json_and_errors(gateway: GatewayApp) -> None:
    url = gateway.http_url
    body = {
        "inputs": [
            {
                "name": "X",
                "shape": [1, 4],
                "datatype": "FP32",
                "data": [6.7, 3.0, 5.2, 2.3],
            }
        ]
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/v2/models/iris/infer", json=body) as response:
            assert response.status == 200
            answer = await response.json()
        label = next(o for o in answer["outputs"] if o["name"] == "label")
        assert label["data"] == [2] and label["shape"] == [1, 1]
        wrong_size = {
            "inputs": [
                {"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1.0]}
            ]
        }
        async with session.post(
            f"{url}/v2/models/iris/infer", json=wrong_size
        ) as response:
            # Triton's own HTTP endpoint answers (HAProxy routes REST straight to
            # it): a client error naming the field.
            assert response.status == 400
            assert "'data'" in (await response.json())["error"]
        async with session.post(f"{url}/v2/models/nope/infer", json=body) as response:
            assert response.status == 404
        async with session.post(
            f"{url}/v2/models/iris/infer", data=b'{"inputs": [' * 100 + b"]" * 100
        ) as response:
            assert response.status == 400
        async with session.post(
            f"{url}/v2/models/iris/infer", data=b'{"inputs": [], "inputs": []}'
        ) as response:
            assert response.status == 400
        async with session.get(f"{url}/v2/health/ready") as response:
            assert response.status == 200
        async with session.get(f"{url}/metrics") as response:
            text = await response.text()
            assert "matrixinfer_grpc_server_requests_total" in text


async def test_http_errors_for_refused_models(gateway: GatewayApp) -> None:
    def call() -> None:
        client = triton_http.InferenceServerClient(
            gateway.http_url.removeprefix("http://")
        )
        try:
            tensor = triton_http.InferInput("X", list(ROWS.shape), "FP32")
            tensor.set_data_from_numpy(ROWS)
            client.infer("resnet", [tensor])
        finally:
            client.close()

    with pytest.raises(InferenceServerException) as info:
        await asyncio.to_thread(call)
    assert "resnet" in str(info.value)
