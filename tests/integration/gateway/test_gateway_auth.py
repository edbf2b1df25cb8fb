"""Auth and rate limits at the gateway, with API keys issued by the registry and
real Triton replicas behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
import pytest_asyncio
from tritonclient.grpc import service_pb2, service_pb2_grpc

from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.core.grpc.errors import error_details
from matrixinfer.gateway.main import GatewayApp
from tests.integration.conftest import Platform, iris_manifests, start_gateway

LIMITED_ROUTE = """  rules:
    - targets: [{modelServer: iris}]
  rateLimit: {requestsPerSecond: 0.5, burst: 2, per: tenant}"""


@dataclass
class Secured:
    app: GatewayApp
    stub: service_pb2_grpc.GRPCInferenceServiceStub
    iris_key: str
    other_key: str
    iris_key_id: str


def infer_request() -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="iris")
    tensor = request.inputs.add(name="X", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([6.7, 3.0, 5.2, 2.3])
    return request


@pytest_asyncio.fixture
async def secured(platform: Platform) -> AsyncIterator[Secured]:
    app = await start_gateway(platform, auth_mode="required")
    channel = grpc.aio.insecure_channel(app.address)
    try:
        manifests = iris_manifests().replace(
            "  rules:\n    - targets: [{modelServer: iris}]", LIMITED_ROUTE
        )
        await platform.apply(manifests)
        await platform.wait_for(
            lambda i: i is not None and i.status.ready_replicas == 1
        )
        iris = await platform.stub.CreateApiKey(
            rpb.CreateApiKeyRequest(
                subject="app", scopes=["infer:iris"], tenant="team-a"
            )
        )
        other = await platform.stub.CreateApiKey(
            rpb.CreateApiKeyRequest(subject="app2", scopes=["infer:resnet"])
        )
        for _ in range(200):  # the gateway learns keys and routes through Watch
            route = app.routes.table.routes.get("iris")
            if (
                iris.api_key.metadata.name in app.routes.api_keys.records
                and route is not None
                and route.rules[0].targets[0][0].replicas
            ):
                break
            await asyncio.sleep(0.05)
        yield Secured(
            app,
            service_pb2_grpc.GRPCInferenceServiceStub(channel),
            iris.secret,
            other.secret,
            iris.api_key.metadata.name,
        )
    finally:
        await channel.close()
        await app.stop(0)


async def call(
    s: Secured, metadata: tuple[tuple[str, str], ...]
) -> service_pb2.ModelInferResponse:
    response: service_pb2.ModelInferResponse = await s.stub.ModelInfer(
        infer_request(), metadata=metadata, timeout=10
    )
    return response


async def code_of(s: Secured, metadata: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(s, metadata)
    assert "mik_" not in (info.value.details() or "")  # no secret is ever echoed
    return info.value.code()


async def test_auth_matrix(secured: Secured, platform: Platform) -> None:
    ok = await call(secured, (("x-api-key", secured.iris_key),))
    label = np.frombuffer(ok.raw_output_contents[0], dtype=np.int64)
    assert label.tolist() == [2]
    assert await code_of(secured, ()) == grpc.StatusCode.UNAUTHENTICATED
    assert await code_of(secured, (("authorization", "Bearer   "),)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert await code_of(secured, (("x-api-key", secured.iris_key + "x"),)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    both = (
        ("x-api-key", secured.iris_key),
        ("authorization", f"Bearer {secured.iris_key}"),
    )
    assert await code_of(secured, both) == grpc.StatusCode.UNAUTHENTICATED
    assert await code_of(secured, (("x-api-key", secured.other_key),)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    # Revocation reaches the gateway through Watch.
    await platform.stub.RevokeApiKey(rpb.RevokeApiKeyRequest(name=secured.iris_key_id))
    for _ in range(100):
        if secured.app.routes.api_keys.records[secured.iris_key_id].revoked:
            break
        await asyncio.sleep(0.05)
    assert await code_of(secured, (("x-api-key", secured.iris_key),)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )


async def test_rate_limit_says_when_to_retry(secured: Secured) -> None:
    bearer = (("authorization", f"Bearer {secured.iris_key}"),)
    await call(secured, bearer)
    await call(secured, bearer)  # burst of 2
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(secured, bearer)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry_after = error_details(info.value).retry_after_s
    assert retry_after is not None and 0 < retry_after <= 2.0
