"""The data plane keeps serving while everything around it changes: under
continuous load through HAProxy, a replica is SIGKILLed, a rolling update runs, a
route's weights change, an API key is revoked and the configuration is reloaded
20 times, and no request fails. A configuration HAProxy refuses leaves the last
good one serving, and says why. HAProxy itself is restarted when it dies."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.gateway.adapters.dataplane.render import Render
from tests.integration.conftest import (
    Platform,
    iris_manifests,
    start_gateway,
    wait_routed,
)

SECOND_SERVER = """
---
apiVersion: networking.matrixinfer.ai/v1alpha1
kind: ModelServer
metadata:
  name: iris-b
spec:
  modelInferRef: iris
  model: iris
"""


def manifests(weights: tuple[int, int], model_version: str = "1") -> str:
    text = iris_manifests(
        **{
            "replicas: 1": "replicas: 2",
            'version: "1"': f'version: "{model_version}"',
        }
    ).replace(
        "  rules:\n    - targets: [{modelServer: iris}]",
        "  rules:\n    - targets: [{modelServer: iris, weight: "
        f"{weights[0]}}}, {{modelServer: iris-b, weight: {weights[1]}}}]",
    )
    return text + SECOND_SERVER


def infer_request() -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="iris")
    tensor = request.inputs.add(name="X", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([6.7, 3.0, 5.2, 2.3])
    return request


async def test_nothing_fails_while_everything_changes(platform: Platform) -> None:
    await platform.apply(manifests((50, 50)))
    await platform.wait_for(
        lambda i: i is not None and i.status.ready_replicas == 2, 90
    )
    app = await start_gateway(platform, auth_mode="required")
    keep = await platform.stub.CreateApiKey(
        rpb.CreateApiKeyRequest(subject="load", scopes=["infer:*"])
    )
    doomed = await platform.stub.CreateApiKey(
        rpb.CreateApiKeyRequest(subject="doomed", scopes=["infer:iris"])
    )
    channel = grpc.aio.insecure_channel(
        app.address, options=[("grpc.use_local_subchannel_pool", 1)]
    )
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    results: dict[str, int] = {"ok": 0}
    failures: list[str] = []
    step = ["warm-up"]  # what was happening when a request failed
    stop = asyncio.Event()

    async def load() -> None:
        metadata = (("x-api-key", keep.secret),)
        while not stop.is_set():
            try:
                answer = await stub.ModelInfer(
                    infer_request(), metadata=metadata, timeout=30
                )
                label = np.frombuffer(answer.raw_output_contents[0], dtype=np.int64)
                if label.tolist() == [2]:
                    results["ok"] += 1
                else:
                    failures.append(f"{step[0]}: wrong answer {label}")
            except grpc.aio.AioRpcError as e:
                failures.append(f"{step[0]}: {e.code().name}: {e.details()}")

    async def served_since(count: int, at_least: int = 20) -> None:
        deadline = time.monotonic() + 30
        while results["ok"] < count + at_least:
            assert time.monotonic() < deadline, "load stalled"
            await asyncio.sleep(0.05)

    async def code_for(secret: str) -> grpc.StatusCode:
        try:
            await stub.ModelInfer(
                infer_request(), metadata=(("x-api-key", secret),), timeout=10
            )
        except grpc.aio.AioRpcError as e:
            return e.code()
        return grpc.StatusCode.OK

    try:
        await wait_routed(app, replicas=2)
        for _ in range(100):
            if keep.api_key.metadata.name in app.routes.api_keys.records:
                break
            await asyncio.sleep(0.05)
        assert await code_for(doomed.secret) == grpc.StatusCode.OK
        workers = [asyncio.create_task(load()) for _ in range(4)]
        await served_since(0)

        # 1. A replica dies (SIGKILL); the controller restarts it meanwhile.
        step[0] = "kill"
        victim = platform.controller.runtime.replicas("default/iris")[0]
        assert victim.pid is not None
        os.killpg(victim.pid, signal.SIGKILL)
        await asyncio.sleep(1.0)
        await served_since(results["ok"])

        # 2. The route's weights change: a map update, no reload.
        step[0] = "weights"
        reloads = app.dataplane.reloads
        await platform.apply(manifests((90, 10)))
        for _ in range(100):
            rules = app.routes.table.routes["iris"].rules
            if [w for _, w in rules[0].targets] == [90, 10]:
                break
            await asyncio.sleep(0.05)
        assert [w for _, w in app.routes.table.routes["iris"].rules[0].targets] == [
            90,
            10,
        ]
        assert app.dataplane.reloads == reloads
        await served_since(results["ok"])

        # 3. An API key is revoked: refused within a second, nobody else affected.
        step[0] = "revoke"
        await platform.stub.RevokeApiKey(
            rpb.RevokeApiKeyRequest(name=doomed.api_key.metadata.name)
        )
        revoked_at = time.monotonic()
        while await code_for(doomed.secret) != grpc.StatusCode.UNAUTHENTICATED:
            assert time.monotonic() - revoked_at < 1.0, "revoked key still served"
            await asyncio.sleep(0.02)

        # 4. Twenty reloads of the configuration.
        step[0] = "reloads"
        for _ in range(20):
            await app.dataplane.reload()
            await asyncio.sleep(0.05)
        await served_since(results["ok"])

        # 5. A rolling update to a new revision of the Model.
        step[0] = "rollout"
        await platform.apply(manifests((90, 10), model_version="2"))
        await platform.wait_for(
            lambda i: (
                i is not None
                and i.status.model_revision == 2
                and i.status.updated_replicas == 2
                and i.status.ready_replicas == 2
                and len(i.status.endpoints) == 2
            ),
            180,
        )
        await served_since(results["ok"])
        stop.set()
        await asyncio.gather(*workers)
    finally:
        stop.set()
        await channel.close()
        await app.stop(0)
    assert failures == [], (len(failures), sorted(set(failures))[:10])
    assert results["ok"] > 200, results


async def test_a_refused_configuration_keeps_the_last_good_one_serving(
    platform: Platform,
) -> None:
    await platform.apply(iris_manifests())
    await platform.wait_for(lambda i: i is not None and i.status.ready_replicas == 1)
    app = await start_gateway(platform)
    channel = grpc.aio.insecure_channel(app.address)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    try:
        await wait_routed(app)
        await stub.ModelInfer(infer_request(), timeout=10)
        render = app.dataplane._render

        def broken(*args: object) -> Render:
            good = render(*args)  # type: ignore[arg-type]
            # What a renderer bug would produce: a structural change HAProxy refuses.
            good.structure += "\nbackend broken\n    balance nonsense\n"
            good.config += "\nbackend broken\n    balance nonsense\n"
            return good

        app.dataplane._render = broken  # type: ignore[method-assign,assignment]
        app.dataplane.changed()
        await app.dataplane.wait_applied()
        assert "balance" in app.dataplane.last_error
        # Still serving with the last good configuration.
        answer = await stub.ModelInfer(infer_request(), timeout=10)
        assert answer.model_name == "iris"
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{app.http_url}/readyz") as ready,
        ):
            assert ready.status == 200
            assert "haproxy refused" in (await ready.json())["dataplane_error"]
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{app.http_url}/metrics") as metrics,
        ):
            text = await metrics.text()
        assert "matrixinfer_gateway_dataplane_config_errors_total 1.0" in text
        assert "matrixinfer_gateway_dataplane_config_ok 0.0" in text
        # The next good render is applied again.
        app.dataplane._render = render  # type: ignore[method-assign]
        app.dataplane.changed()
        await app.dataplane.wait_applied()
        assert app.dataplane.last_error == ""
        await stub.ModelInfer(infer_request(), timeout=10)
    finally:
        await channel.close()
        await app.stop(0)


async def test_haproxy_is_restarted_when_it_dies(platform: Platform) -> None:
    await platform.apply(iris_manifests())
    await platform.wait_for(lambda i: i is not None and i.status.ready_replicas == 1)
    app = await start_gateway(platform)
    try:
        await wait_routed(app)
        master = app.dataplane.process.pid
        assert master is not None
        os.killpg(master, signal.SIGKILL)
        for _ in range(200):
            if (
                app.dataplane.process.restarts == 1
                and app.dataplane.process.pid != master
            ):
                break
            await asyncio.sleep(0.05)
        assert app.dataplane.process.restarts == 1
        for _ in range(100):  # listening again with the last configuration
            try:
                async with grpc.aio.insecure_channel(app.address) as channel:
                    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                    answer = await stub.ModelInfer(infer_request(), timeout=5)
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.1)
        assert answer.model_name == "iris"
    finally:
        await app.stop(0)
    # No HAProxy left behind.
    assert app.dataplane.process.pid is not None
    try:
        os.kill(app.dataplane.process.pid, 0)
    except ProcessLookupError:
        pass
    else:
        raise AssertionError("haproxy outlived the gateway")


async def test_a_weighted_canary_splits_real_requests_within_two_points(
    platform: Platform,
) -> None:
    await platform.apply(manifests((90, 10)).replace("replicas: 2", "replicas: 1"))
    await platform.wait_for(lambda i: i is not None and i.status.ready_replicas == 1)
    app = await start_gateway(platform)
    channel = grpc.aio.insecure_channel(app.address)
    request = infer_request().SerializeToString()
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    total = 10_000
    try:
        await wait_routed(app)

        async def worker(count: int) -> None:
            for _ in range(count):
                await call(request, timeout=30)

        await asyncio.gather(*(worker(total // 20) for _ in range(20)))
        await asyncio.sleep(0.6)  # HAProxy's counters are read four times a second
        rows = app.dataplane.stats.rows
        canary = int(rows["g:default:iris:iris-b"]["stot"])
        stable = int(rows["g:default:iris:iris"]["stot"])
    finally:
        await channel.close()
        await app.stop(0)
    assert canary + stable == total
    assert abs(canary / total - 0.10) <= 0.02, (canary, stable)
