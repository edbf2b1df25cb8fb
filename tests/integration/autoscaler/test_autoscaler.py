"""The autoscaler on a real platform: registry, controller with real Triton replicas,
a gateway reporting load and holding requests at zero, and the autoscaler service.
Windows are short (stable 6 s, panic 2 s) so that each scenario takes seconds."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import pytest_asyncio
import tritonclient.grpc.aio as triton_aio

from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.autoscaler.main import AutoscalerApp
from matrixinfer.autoscaler.settings import AutoscalerSettings
from matrixinfer.gateway.main import GatewayApp
from tests.integration.conftest import (
    Platform,
    iris_manifests,
    start_gateway,
    wait_routed,
)

POLICY = """
---
apiVersion: registry.matrixinfer.ai/v1alpha1
kind: AutoscalingPolicy
metadata: {{name: iris}}
spec:
  targetRef: {{kind: ModelInfer, name: iris}}
  minReplicas: {min}
  maxReplicas: 2
  metrics: [{{type: RequestsPerSecond, target: 20}}]
  behavior:
    stableWindowSeconds: 6
    panicWindowSeconds: 2
    scaleDown: {{stabilizationWindowSeconds: 0, periodSeconds: 1, maxPercent: 100}}
    scaleToZeroGracePeriodSeconds: {grace}
"""


async def start_autoscaler(platform: Platform, **settings: object) -> AutoscalerApp:
    """An autoscaler following this platform (a 0.5 s tick); ``settings`` add to or
    replace its settings."""
    values: dict[str, object] = {
        "registry_address": platform.registry.address,
        "controller_address": platform.controller.address,
        "grpc_port": 0,
        "tick_s": 0.5,
        "log_json": False,
    }
    values.update(settings)
    return await AutoscalerApp.start(AutoscalerSettings(**values))  # type: ignore[arg-type]


@dataclass
class Scaled:
    platform: Platform
    gateway: GatewayApp
    autoscaler: AutoscalerApp


@pytest_asyncio.fixture
async def scaled(platform: Platform) -> AsyncIterator[Scaled]:
    autoscaler = await start_autoscaler(platform)
    gateway = await start_gateway(platform, autoscaler_address=autoscaler.address)
    holder = Scaled(platform, gateway, autoscaler)
    try:
        yield holder
    finally:
        await holder.gateway.stop(0)
        await holder.autoscaler.stop(0)


async def deploy(s: Scaled, min_replicas: int) -> None:
    await s.platform.apply(iris_manifests() + POLICY.format(min=min_replicas, grace=2))
    await s.platform.wait_for(lambda i: i is not None and i.status.ready_replicas == 1)
    await wait_routed(s.gateway)


def request() -> list[triton_aio.InferInput]:
    tensor = triton_aio.InferInput("X", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.array([[6.7, 3.0, 5.2, 2.3]], dtype=np.float32))
    return [tensor]


@contextlib.asynccontextmanager
async def load(gateway: GatewayApp, rps: float) -> AsyncIterator[list[str]]:
    """Requests at about ``rps`` through the gateway until the block ends; the
    yielded list collects failures (a user would see them)."""
    failures: list[str] = []
    client = triton_aio.InferenceServerClient(gateway.address)

    async def run() -> None:
        while True:
            started = time.monotonic()
            try:
                await client.infer("iris", request(), client_timeout=10)
            except Exception as e:  # noqa: BLE001 - every failure is recorded
                failures.append(str(e))
            await asyncio.sleep(max(0.0, 1 / rps - (time.monotonic() - started)))

    task = asyncio.create_task(run())
    try:
        yield failures
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()


async def policy_status(platform: Platform) -> pb.AutoscalingPolicyStatus:
    resource = await platform.stub.Get(
        rpb.GetRequest(kind="AutoscalingPolicy", name="iris"), timeout=5
    )
    status: pb.AutoscalingPolicyStatus = resource.autoscaling_policy.status
    return status


async def test_load_step_scales_up_and_removed_load_scales_down(
    scaled: Scaled,
) -> None:
    await deploy(scaled, min_replicas=1)
    async with load(scaled.gateway, rps=50) as failures:
        infer = await scaled.platform.wait_for(
            lambda i: i is not None and i.status.ready_replicas == 2, timeout_s=30
        )
        assert infer is not None
        assert "RequestsPerSecond" in infer.status.scale_reason
        for _ in range(50):
            status = await policy_status(scaled.platform)
            if status.desired_replicas == 2:
                break
            await asyncio.sleep(0.1)
        assert status.desired_replicas == 2
        # RFC 3339 in UTC, as every timestamp the platform writes.
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", status.last_scale_time)
    assert failures == []
    # Load gone: back to minReplicas once the stable window has seen it.
    removed = time.monotonic()
    infer = await scaled.platform.wait_for(
        lambda i: i is not None and i.status.desired_replicas == 1, timeout_s=30
    )
    assert time.monotonic() - removed >= 2.0  # not before the windows saw it
    # The policy's status follows (written by the same tick, right after Scale).
    for _ in range(50):
        status = await policy_status(scaled.platform)
        if status.desired_replicas == 1:
            break
        await asyncio.sleep(0.1)
    assert status.desired_replicas == 1 and status.mode == "stable"


async def test_idle_goes_to_zero_and_a_request_at_zero_is_served(
    scaled: Scaled,
) -> None:
    await deploy(scaled, min_replicas=0)
    infer = await scaled.platform.wait_for(
        lambda i: (
            i is not None
            and i.status.desired_replicas == 0
            and i.status.ready_replicas == 0
        ),
        timeout_s=40,
    )
    assert infer is not None
    assert re.fullmatch(r"idle for [0-9.]+s → scale to zero", infer.status.scale_reason)
    await wait_until_unrouted(scaled.gateway)
    # A long grace from here on: once the request below is served, nothing may take
    # the model back to zero while the test looks (the 2 s grace would, after 2 s
    # without traffic), so what the test sees is the activation and nothing after it.
    await scaled.platform.apply(POLICY.format(min=0, grace=600))
    await until_the_autoscaler_has_grace(scaled.autoscaler, 600)

    client = triton_aio.InferenceServerClient(scaled.gateway.address)
    try:
        result = await client.infer("iris", request(), client_timeout=30)
    finally:
        await client.close()
    label = result.as_numpy("label")
    assert label is not None and label.reshape(-1).tolist() == [2]
    # One replica, started by the activation: one request is far under the target
    # of 20 requests per second per replica (no further scale-up), and within the
    # 600 s grace nothing scales it down, so the last scale is the activation.
    infer = await scaled.platform.wait_for(
        lambda i: (
            i is not None
            and i.status.desired_replicas == 1
            and i.status.ready_replicas == 1
        ),
        timeout_s=10,
    )
    assert infer is not None
    assert infer.status.scale_reason == "activation: a request arrived at zero replicas"


async def until_the_autoscaler_has_grace(app: AutoscalerApp, grace_s: int) -> None:
    """Until the autoscaler's informer holds the policy with this grace period
    (an Activate takes the policy from there)."""
    for _ in range(200):
        resource = app.informer.get("AutoscalingPolicy", "default", "iris")
        if resource is not None:
            behavior = resource.autoscaling_policy.spec.behavior
            if behavior.scale_to_zero_grace_period_seconds == grace_s:
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the autoscaler never saw a {grace_s} s grace period")


async def wait_until_unrouted(gateway: GatewayApp) -> None:
    for _ in range(200):
        if "iris" in gateway.routes.table.routes and (
            gateway.routes.table.routed_replicas("iris") == 0
        ):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the gateway still routes iris to a replica")


async def test_restarted_autoscaler_does_not_scale_down_wrongly(
    scaled: Scaled,
) -> None:
    await deploy(scaled, min_replicas=1)
    async with load(scaled.gateway, rps=50) as failures:
        await scaled.platform.wait_for(
            lambda i: i is not None and i.status.ready_replicas == 2, timeout_s=30
        )
        # Kill the autoscaler mid-run and start a new one (nothing carried over);
        # the gateway reconnects its load reports on its own.
        await scaled.autoscaler.stop(0)
        address = scaled.autoscaler.address
        settings = scaled.autoscaler.settings.model_copy(
            update={"grpc_port": int(address.rsplit(":", 1)[1])}
        )
        scaled.autoscaler = await AutoscalerApp.start(settings)
        # The load still needs 2 replicas: the new autoscaler, whose windows start
        # empty, must never drop below that while it refills them.
        seen: list[int] = []
        deadline = time.monotonic() + 8.0
        while time.monotonic() < deadline:
            infer = await scaled.platform.infer_status()
            assert infer is not None
            seen.append(infer.status.desired_replicas)
            await asyncio.sleep(0.25)
        assert min(seen) == 2, seen
    assert failures == []
