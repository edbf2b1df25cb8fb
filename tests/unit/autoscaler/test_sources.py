"""The autoscaler's metric sources: gateway reports (freshness, sums over gateways)
and the parsing of Triton's Prometheus text."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from matrixinfer.api.v1 import autoscaler_pb2 as apb
from matrixinfer.autoscaler.adapters.gateway import GatewayLoad
from matrixinfer.autoscaler.adapters.prometheus import PrometheusQuery
from matrixinfer.autoscaler.adapters.triton import parse_triton_metrics

TRITON_TEXT = """\
# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="iris",version="1"} 120
# HELP nv_inference_queue_duration_us Cumulative inference queuing duration
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="iris",version="1"} 6000
# HELP nv_inference_pending_request_count Instantaneous number of pending requests
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="iris",version="1"} 3
# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{gpu_uuid="GPU-1"} 0.5
nv_gpu_utilization{gpu_uuid="GPU-2"} 0.25
"""


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def report(gateway: str, in_flight: float, arrivals: int) -> apb.LoadReport:
    r = apb.LoadReport(gateway_id=gateway, window_seconds=1.0)
    r.models.add(
        namespace="default", model_infer="iris", in_flight=in_flight, arrivals=arrivals
    )
    return r


def test_gateway_reports_are_summed_and_go_missing_when_stale() -> None:
    clock = Clock()
    load = GatewayLoad(stale_s=3.0, clock=clock)
    key = ("default", "iris")
    assert load.values(key) == {}  # no gateway yet: missing, not zero
    load.ingest(report("g1", 2.5, 30))
    load.ingest(report("g2", 1.5, 10))
    assert load.values(key) == {"Concurrency": 4.0, "RequestsPerSecond": 40.0}
    assert load.values(("default", "other")) == {
        "Concurrency": 0.0,
        "RequestsPerSecond": 0.0,
    }  # gateways are there and saw no traffic for it: a real zero
    assert load.take_arrivals(key) == 40 and load.take_arrivals(key) == 0
    clock.now += 2.0
    load.ingest(report("g1", 1.0, 5))
    clock.now += 2.0  # g2 is now stale, g1 is not
    assert load.values(key) == {"Concurrency": 1.0, "RequestsPerSecond": 5.0}
    clock.now += 5.0  # every gateway is stale: the data is missing
    assert load.values(key) == {}


def test_triton_text_is_reduced_to_the_families_used() -> None:
    parsed = parse_triton_metrics(TRITON_TEXT)
    assert parsed["nv_inference_pending_request_count"] == 3
    assert parsed["nv_inference_queue_duration_us"] == 6000
    assert parsed["nv_inference_request_success"] == 120
    assert parsed["nv_gpu_utilization"] == 0.375
    assert "nv_gpu_utilization" not in parse_triton_metrics(
        TRITON_TEXT.split("# HELP nv_gpu")[0]
    )  # CPU-only: no GPU figure rather than a made-up 0


async def test_prometheus_query_reads_gpu_utilization() -> None:
    """Against a stand-in for Prometheus' HTTP API (one layer: the query and the
    parsing of its documented JSON answer)."""
    seen: list[str] = []
    answers: list[object] = [
        {
            "status": "success",
            "data": {
                "resultType": "vector",
                "result": [{"metric": {}, "value": [1700000000.0, "63.5"]}],
            },
        },
        {"status": "success", "data": {"resultType": "vector", "result": []}},
        {"status": "error", "error": "bad query"},
    ]

    async def query(request: web.Request) -> web.Response:
        seen.append(request.query["query"])
        return web.json_response(answers.pop(0))

    app = web.Application()
    app.router.add_get("/api/v1/query", query)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as session:
            prometheus = PrometheusQuery(session, url, timeout_s=2.0)
            key = ("default", "iris")
            assert await prometheus.gpu_utilization(key) == 63.5
            assert await prometheus.gpu_utilization(key) is None  # no series
            assert await prometheus.gpu_utilization(key) is None  # an error answer
            unreachable = PrometheusQuery(session, "http://127.0.0.1:1", 0.5)
            assert await unreachable.gpu_utilization(key) is None
    finally:
        await runner.cleanup()
    assert seen[0] == (
        '100 * avg(nv_gpu_utilization{namespace="default",model_infer="iris"})'
    )
