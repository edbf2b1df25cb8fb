"""A new Model revision rolls out under continuous inference with zero failed
requests. The requests go the way a user's do: an unchanged tritonclient calls the
real gateway (HAProxy carries them to the replicas it is configured with), and each
answer names the revision that served it (Triton's ``model_version`` is the Model's
revision), so the test sees traffic move from revision 1 to revision 2."""

from __future__ import annotations

import asyncio
import collections
import time

import numpy as np
import pytest
import tritonclient.grpc.aio as triton_grpc

from matrixinfer.gateway.main import GatewayApp
from tests.integration.conftest import (
    Platform,
    iris_manifests,
    start_gateway,
    wait_routed,
)

ROW = np.array([[6.7, 3.0, 5.2, 2.3]], dtype=np.float32)  # virginica: label 2
SENDERS = 2


class Traffic:
    """``SENDERS`` clients calling the gateway one request after another until
    stopped; answers are counted by (revision, label), failures kept whole."""

    def __init__(self, gateway: GatewayApp) -> None:
        self.gateway = gateway
        self.answers: collections.Counter[tuple[str, int]] = collections.Counter()
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._send()) for _ in range(SENDERS)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def served_by(self, revision: str) -> int:
        return sum(n for (r, _), n in self.answers.items() if r == revision)

    async def until_served_by(self, revision: str, more_than: int) -> None:
        deadline = time.monotonic() + 30
        while self.served_by(revision) <= more_than:
            assert time.monotonic() < deadline, (
                f"revision {revision} answered no more requests: {self.answers}, "
                f"failures {self.failures[:5]}"
            )
            await asyncio.sleep(0.05)

    async def _send(self) -> None:
        client = triton_grpc.InferenceServerClient(self.gateway.address)
        try:
            while not self._stop.is_set():
                tensor = triton_grpc.InferInput("X", [1, 4], "FP32")
                tensor.set_data_from_numpy(ROW)
                try:
                    result = await client.infer("iris", [tensor], client_timeout=10)
                except Exception as e:  # noqa: BLE001 - every failure is asserted on
                    self.failures.append(str(e))
                    continue
                labels = result.as_numpy("label")
                label = -1 if labels is None else int(labels.reshape(-1)[0])
                revision = result.get_response().model_version
                self.answers[(revision, label)] += 1
        finally:
            await client.close()


@pytest.mark.timeout(300)
async def test_rollout_through_the_gateway_fails_no_request(
    platform: Platform,
) -> None:
    two = {"replicas: 1": "replicas: 2"}
    await platform.apply(iris_manifests(**two))
    await platform.wait_for(
        lambda i: i is not None and i.status.ready_replicas == 2, 90
    )
    gateway = await start_gateway(platform)
    traffic = Traffic(gateway)
    try:
        await wait_routed(gateway, replicas=2)
        traffic.start()
        await traffic.until_served_by("1", more_than=50)

        # A new revision: same artifact, new version string.
        await platform.apply(iris_manifests(**two, **{'version: "1"': 'version: "2"'}))
        infer = await platform.wait_for(
            lambda i: (
                i is not None
                and i.status.model_revision == 2
                and i.status.updated_replicas == 2
                and i.status.ready_replicas == 2
                and i.status.replicas == 2
            ),
            timeout_s=150,
        )
        # The old replicas are gone; traffic keeps flowing on the new ones.
        after_rollout = traffic.served_by("2")
        await traffic.until_served_by("2", more_than=after_rollout + 50)
    finally:
        await traffic.stop()
        await gateway.stop(0)
    assert infer is not None
    assert {e.revision for e in infer.status.endpoints} == {2}
    assert traffic.failures == [], (len(traffic.failures), traffic.failures[:5])
    # Every answer is the right label, and both revisions answered through HAProxy.
    assert set(traffic.answers) == {("1", 2), ("2", 2)}, traffic.answers
