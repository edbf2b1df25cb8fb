"""Routing decisions HAProxy makes itself, observed on its own counters: header
matches (exact, prefix, regex) in rule order, and sticky routing by a header
(consistent hashing) across two real replicas."""

from __future__ import annotations

import asyncio
from functools import partial

import aiohttp
import grpc
import pytest
from tritonclient.grpc import service_pb2

from tests.integration.conftest import (
    IRIS_REST_BODY,
    Platform,
    carried_by,
    iris_manifests,
    start_gateway,
    wait_routed,
)

SERVERS = "".join(
    f"""
---
apiVersion: networking.matrixinfer.ai/v1alpha1
kind: ModelServer
metadata:
  name: {name}
spec:
  modelInferRef: iris
  model: iris
"""
    for name in ("iris-exact", "iris-prefix", "iris-regex")
)
RULES = """  rules:
    - match: {headers: {x-canary: {exact: "yes please"}}}
      targets: [{modelServer: iris-exact}]
    - match: {headers: {x-tier: {prefix: gold}}}
      targets: [{modelServer: iris-prefix}]
    - match: {headers: {x-user: {regex: "team-[0-9]+"}}}
      targets: [{modelServer: iris-regex}]
    - targets: [{modelServer: iris}]"""


def request(name: str = "iris") -> bytes:
    message = service_pb2.ModelInferRequest(model_name=name)
    tensor = message.inputs.add(name="X", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([6.7, 3.0, 5.2, 2.3])
    raw: bytes = message.SerializeToString()
    return raw


async def test_header_matches_pick_the_rule_in_order(platform: Platform) -> None:
    await platform.apply(
        iris_manifests().replace(
            "  rules:\n    - targets: [{modelServer: iris}]", RULES
        )
        + SERVERS
    )
    await platform.wait_for(lambda i: i is not None and i.status.ready_replicas == 1)
    app = await start_gateway(platform)
    cases = [
        ((("x-canary", "yes please"),), "iris-exact"),
        ((("x-canary", "yes"),), "iris"),  # exact means exact
        ((("x-tier", "gold-plus"),), "iris-prefix"),
        ((("x-tier", "silver-gold"),), "iris"),
        ((("x-user", "team-42"),), "iris-regex"),
        ((("x-user", "team-42x"),), "iris"),  # the whole value must match
        ((("x-canary", "yes please"), ("x-user", "team-1")), "iris-exact"),  # order
        ((), "iris"),
    ]
    try:
        await wait_routed(app)
        async with grpc.aio.insecure_channel(app.address) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            for headers, server in cases:
                rows = await carried_by(
                    app, "g:", partial(call, request(), metadata=headers, timeout=10)
                )
                grew = [proxy for proxy, _ in rows]
                assert f"g:default:iris:{server}" in grew, (headers, grew)
    finally:
        await app.stop(0)


async def test_sticky_routing_by_header_through_the_proxy(platform: Platform) -> None:
    sticky = iris_manifests(**{"replicas: 1": "replicas: 2"}).replace(
        "  model: iris\n",
        "  model: iris\n  trafficPolicy:\n"
        "    loadBalancer: {type: CONSISTENT_HASH, consistentHash: {header: x-user}}\n",
        1,
    )
    await platform.apply(sticky)
    await platform.wait_for(
        lambda i: i is not None and i.status.ready_replicas == 2, 90
    )
    app = await start_gateway(platform)
    try:
        await wait_routed(app, replicas=2)
        async with grpc.aio.insecure_channel(app.address) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            homes: dict[str, set[str]] = {}
            for user in range(12):
                for _ in range(5):
                    metadata = (("x-user", f"user-{user}"),)
                    rows = await carried_by(
                        app,
                        "g:default:iris:iris",
                        partial(call, request(), metadata=metadata, timeout=10),
                    )
                    replica = [server for _, server in rows if server != "BACKEND"]
                    homes.setdefault(f"user-{user}", set()).update(replica)
        # Every user always lands on the same replica; users spread over both.
        assert all(len(replicas) == 1 for replicas in homes.values()), homes
        assert len(set().union(*homes.values())) == 2, homes
    finally:
        await app.stop(0)


async def test_route_timeouts_and_client_deadlines_are_enforced_by_haproxy(
    platform: Platform,
) -> None:
    """A replica that holds each request ~3 s (Triton waits for a preferred batch
    that never forms): the rule's timeoutMs ends the call at the gateway with
    DEADLINE_EXCEEDED (REST: 504); a shorter client deadline wins."""
    slow = iris_manifests(
        **{
            "preferredBatchSizes: [16, 32]": "preferredBatchSizes: [64]",
            "maxQueueDelayMicroseconds: 200": "maxQueueDelayMicroseconds: 3000000",
        }
    ).replace(
        "  rules:\n    - targets: [{modelServer: iris}]",
        "  rules:\n    - targets: [{modelServer: iris}]\n      timeoutMs: 400",
    )
    await platform.apply(slow)
    await platform.wait_for(
        lambda i: i is not None and i.status.ready_replicas == 1, 90
    )
    app = await start_gateway(platform)
    try:
        await wait_routed(app)
        loop = asyncio.get_running_loop()
        async with grpc.aio.insecure_channel(app.address) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            started = loop.time()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(request(), timeout=10)
            took = loop.time() - started
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "gateway" in (info.value.details() or "")  # HAProxy's answer
            assert took < 2.5  # the route's 0.4 s, not the replica's 3 s
        async with aiohttp.ClientSession() as session:
            started = loop.time()
            async with session.post(
                f"{app.http_url}/v2/models/iris/infer", json=IRIS_REST_BODY
            ) as response:
                assert response.status == 504
                assert "deadline" in (await response.json())["error"]
            assert loop.time() - started < 2.5
    finally:
        await app.stop(0)


async def test_round_robin_takes_the_replicas_in_turn(platform: Platform) -> None:
    turns = iris_manifests(**{"replicas: 1": "replicas: 2"}).replace(
        "  model: iris\n",
        "  model: iris\n  trafficPolicy:\n    loadBalancer: {type: ROUND_ROBIN}\n",
        1,
    )
    await platform.apply(turns)
    await platform.wait_for(
        lambda i: i is not None and i.status.ready_replicas == 2, 90
    )
    app = await start_gateway(platform)
    try:
        await wait_routed(app, replicas=2)
        order = []
        async with grpc.aio.insecure_channel(app.address) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            for _ in range(8):
                rows = await carried_by(
                    app, "g:default:iris:iris", lambda: call(request(), timeout=10)
                )
                order += [server for _, server in rows if server != "BACKEND"]
        # One call at a time, each to the other replica.
        assert len(order) == 8 and len(set(order)) == 2, order
        assert all(a != b for a, b in zip(order, order[1:], strict=False)), order
    finally:
        await app.stop(0)
