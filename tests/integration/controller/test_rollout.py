"""A new Model revision rolls out under continuous inference with zero failed
requests. The client plays the gateway's part: it follows the ModelInfer's endpoints
through Watch and sends only to ready replicas that are not draining."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import numpy as np
import tritonclient.grpc.aio as triton_grpc

from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.api.v1 import resources_pb2 as pb
from tests.integration.conftest import Platform, iris_manifests

ROW = np.array([[6.7, 3.0, 5.2, 2.3]], dtype=np.float32)


class EndpointFollower:
    def __init__(self) -> None:
        self.endpoints: list[pb.Endpoint] = []
        self.changed = asyncio.Event()

    async def follow(self, platform: Platform) -> None:
        stream = platform.stub.Watch(
            rpb.WatchRequest(kind="ModelInfer", send_initial_events=True)
        )
        async for event in stream:
            if event.type in ("ADDED", "MODIFIED"):
                self.endpoints = [
                    e
                    for e in event.object.model_infer.status.endpoints
                    if e.ready and not e.draining
                ]
                self.changed.set()


async def send_forever(follower: EndpointFollower, results: dict[str, int]) -> None:
    clients: dict[str, triton_grpc.InferenceServerClient] = {}
    try:
        for n in itertools.count():
            if not follower.endpoints:
                await asyncio.sleep(0.01)
                continue
            endpoint = follower.endpoints[n % len(follower.endpoints)]
            address = f"{endpoint.address}:{endpoint.grpc_port}"
            client = clients.setdefault(
                address, triton_grpc.InferenceServerClient(address)
            )
            tensor = triton_grpc.InferInput("X", [1, 4], "FP32")
            tensor.set_data_from_numpy(ROW)
            try:
                result = await client.infer("iris", [tensor], client_timeout=10)
                labels = result.as_numpy("label")
                ok = labels is not None and int(labels.reshape(-1)[0]) == 2
                results["ok" if ok else "wrong"] += 1
                results[f"revision-{endpoint.revision}"] += 1
            except Exception as e:  # every failure counts; the test asserts on them
                results["failed"] += 1
                results.setdefault(f"error: {e}"[:200], 0)
    finally:
        for client in clients.values():
            with contextlib.suppress(Exception):
                await client.close()


async def test_rollout_under_load_has_zero_failures(platform: Platform) -> None:
    await platform.apply(iris_manifests(**{"replicas: 1": "replicas: 2"}))
    await platform.wait_for(
        lambda i: i is not None and i.status.ready_replicas == 2, 90
    )
    follower = EndpointFollower()
    results: dict[str, int] = {
        "ok": 0,
        "wrong": 0,
        "failed": 0,
        "revision-1": 0,
        "revision-2": 0,
    }
    watcher = asyncio.create_task(follower.follow(platform))
    sender = asyncio.create_task(send_forever(follower, results))
    try:
        await asyncio.sleep(1.0)
        assert results["ok"] > 0
        # A new revision: same artifact, new version string.
        await platform.apply(
            iris_manifests(
                **{"replicas: 1": "replicas: 2", 'version: "1"': 'version: "2"'}
            )
        )
        infer = await platform.wait_for(
            lambda i: (
                i is not None
                and i.status.model_revision == 2
                and i.status.updated_replicas == 2
                and i.status.ready_replicas == 2
                and i.status.replicas == 2
            ),
            timeout_s=120,
        )
        await asyncio.sleep(1.0)  # traffic keeps flowing on the new revision
    finally:
        sender.cancel()
        watcher.cancel()
        await asyncio.gather(sender, watcher, return_exceptions=True)
    assert infer is not None
    assert {e.revision for e in infer.status.endpoints} == {2}
    assert results["failed"] == 0, results
    assert results["wrong"] == 0, results
    assert results["revision-1"] > 0 and results["revision-2"] > 0, results
