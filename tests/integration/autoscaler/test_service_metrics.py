"""Every service's /metrics scraped while it works: the controller's gRPC series
after a call, the autoscaler's decision series for a real policy (the gateway's
and the registry's are scraped in their own tests)."""

from __future__ import annotations

import asyncio

import aiohttp
import grpc
from prometheus_client.parser import text_string_to_metric_families

from matrixinfer.api.v1 import controller_pb2 as cpb
from matrixinfer.api.v1 import controller_pb2_grpc
from matrixinfer.controller.main import ControllerApp
from matrixinfer.controller.settings import ControllerSettings
from tests.integration.autoscaler.test_autoscaler import POLICY, start_autoscaler
from tests.integration.conftest import Platform, iris_manifests


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        text = await response.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_controller_and_autoscaler_metrics(platform: Platform) -> None:
    # A controller with its metrics port, stopped before anything is applied (two
    # controllers would both reconcile).
    controller = await ControllerApp.start(
        ControllerSettings(
            registry_address=platform.registry.address,
            grpc_port=0,
            metrics_port=0,
            state_dir=platform.controller.settings.state_dir.parent / "metrics-only",
            log_json=False,
        )
    )
    try:
        assert controller.metrics_server is not None
        async with grpc.aio.insecure_channel(controller.address) as channel:
            try:
                await controller_pb2_grpc.ControllerStub(channel).GetReplicas(
                    cpb.GetReplicasRequest(namespace="default", model_infer="none"),
                    timeout=5,
                )
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.NOT_FOUND
        series = await scrape(controller.metrics_server.port)
    finally:
        await controller.stop(0)
    calls = [
        v
        for (name, labels), v in series.items()
        if name == "matrixinfer_grpc_server_requests_total"
        and ("method", "GetReplicas") in labels
    ]
    assert calls and sum(calls) >= 1

    autoscaler = await start_autoscaler(platform, metrics_port=0)
    try:
        await platform.apply(iris_manifests() + POLICY.format(min=1, grace=2))
        assert autoscaler.metrics_server is not None
        key = (("model_infer", "iris"), ("namespace", "default"))
        for _ in range(100):
            series = await scrape(autoscaler.metrics_server.port)
            if series.get(("matrixinfer_autoscaler_ready_replicas", key)) == 1:
                break
            await asyncio.sleep(0.2)
        assert series[("matrixinfer_autoscaler_ready_replicas", key)] == 1
        assert series[("matrixinfer_autoscaler_desired_replicas", key)] == 1
        assert series[("matrixinfer_autoscaler_panic_mode", key)] == 0
    finally:
        await autoscaler.stop(0)
