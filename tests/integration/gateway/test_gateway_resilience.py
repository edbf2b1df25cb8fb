"""Keep serving when parts fail: a replica killed under continuous load costs no
request (HAProxy retries it on the other replica), and a global rate limit is
shared by two gateways through HAProxy's peers."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import uuid

import numpy as np
import tritonclient.grpc.aio as triton_aio

from matrixinfer.core.ports import free_ports
from tests.integration.conftest import (
    Platform,
    iris_manifests,
    start_gateway,
    wait_routed,
)


def tensor() -> triton_aio.InferInput:
    t = triton_aio.InferInput("X", [1, 4], "FP32")
    t.set_data_from_numpy(np.array([[6.7, 3.0, 5.2, 2.3]], dtype=np.float32))
    return t


async def test_killing_a_replica_under_load_fails_no_request(
    platform: Platform,
) -> None:
    await platform.apply(iris_manifests(**{"replicas: 1": "replicas: 2"}))
    await platform.wait_for(
        lambda i: i is not None and i.status.ready_replicas == 2, 90
    )
    app = await start_gateway(platform)
    client = triton_aio.InferenceServerClient(app.address)
    results = {"ok": 0, "failed": 0}
    errors: list[str] = []  # what the failures said, for the assertion message
    stop = asyncio.Event()

    async def load() -> None:
        while not stop.is_set():
            try:
                result = await client.infer("iris", [tensor()], client_timeout=30)
                labels = result.as_numpy("label")
                ok = labels is not None and labels.reshape(-1).tolist() == [2]
                results["ok" if ok else "failed"] += 1
            except Exception as e:  # every failure is counted and asserted on
                results["failed"] += 1
                errors.append(str(e)[:200])

    try:
        await wait_routed(app, replicas=2)
        workers = [asyncio.create_task(load()) for _ in range(4)]
        await asyncio.sleep(1.0)
        victim = platform.controller.runtime.replicas("default/iris")[0]
        assert victim.pid is not None
        os.killpg(victim.pid, signal.SIGKILL)
        before = results["ok"]
        await asyncio.sleep(3.0)  # the controller restarts it meanwhile
        stop.set()
        await asyncio.gather(*workers)
    finally:
        await client.close()
        await app.stop(0)
    assert results["failed"] == 0, (results, errors[:5])
    assert results["ok"] > before > 0


async def test_two_gateways_share_a_global_limit_through_haproxy_peers(
    platform: Platform,
) -> None:
    route = f"iris-{uuid.uuid4().hex[:6]}"
    manifests = (
        iris_manifests()
        .replace("modelName: iris", f"modelName: {route}")
        .replace(
            "  rules:\n    - targets: [{modelServer: iris}]",
            "  rules:\n    - targets: [{modelServer: iris}]\n"
            "  rateLimit: {requestsPerSecond: 0.5, burst: 10, global: true}",
        )
    )
    await platform.apply(manifests)
    await platform.wait_for(lambda i: i is not None and i.status.ready_replicas == 1)
    peers = [
        f"gw{i}=127.0.0.1:{port}" for i, port in zip((1, 2), free_ports(2), strict=True)
    ]
    apps = [
        await start_gateway(platform, peers=peers, peer_name=f"gw{i}") for i in (1, 2)
    ]
    clients = [triton_aio.InferenceServerClient(app.address) for app in apps]
    try:
        for app in apps:
            await wait_routed(app, route)
        # Until each gateway's HAProxy has its peer session up (a fixed pause was
        # too short on a loaded machine: counts made before it are not shared).
        for app in apps:
            for _ in range(100):
                peers_state = await app.dataplane.process.runtime.execute("show peers")
                if "last_status=ESTA" in peers_state:
                    break
                await asyncio.sleep(0.1)
            assert "last_status=ESTA" in peers_state, peers_state

        async def attempt(client: triton_aio.InferenceServerClient) -> bool:
            try:
                await client.infer(route, [tensor()], client_timeout=10)
                return True
            except Exception as e:
                assert "RESOURCE_EXHAUSTED" in str(e)
                return False

        outcomes = []
        # Callers alternate between the gateways, half a second apart: peers
        # propagate counter updates asynchronously (a quarter second was too close
        # on a loaded machine).
        for client, _ in zip(itertools.cycle(clients), range(24), strict=False):
            outcomes.append(await attempt(client))
            await asyncio.sleep(0.5)
    finally:
        for client in clients:
            await client.close()
        for app in apps:
            await app.stop(0)
    # One counter for both gateways: 10 requests per 20 s window in all (a slack
    # of 2 for the sliding window), where two separate counters would let 20 pass.
    assert 10 <= sum(outcomes) <= 12, outcomes
