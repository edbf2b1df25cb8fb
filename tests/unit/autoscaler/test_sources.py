"""The autoscaler's metric sources: gateway reports (freshness, sums over gateways)
and the parsing of Triton's Prometheus text."""

from __future__ import annotations

from matrixinfer.api.v1 import autoscaler_pb2 as apb
from matrixinfer.autoscaler.sources import GatewayLoad, parse_triton_metrics

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
