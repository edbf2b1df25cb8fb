"""`matrixinfer top`'s numbers from canned gateway metrics and statistics."""

from __future__ import annotations

import math

import pytest

from matrixinfer.cli.top import (
    Row,
    batch_size,
    build_rows,
    fill_metrics,
    format_rows,
    parse_metrics,
    quantile,
    rate,
)

BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.1)


def metrics(
    counts: dict[tuple[str, str], float], buckets: dict[str, list[float]]
) -> str:
    """Gateway /metrics text: requests by (model, code), bucket counts per model
    (non-cumulative, one per bound of BUCKETS plus +Inf)."""
    lines = [
        "# HELP matrixinfer_gateway_requests_total Inference calls.",
        "# TYPE matrixinfer_gateway_requests_total counter",
    ]
    for (model, code), value in counts.items():
        labels = f'code="{code}",model="{model}"'
        lines.append(f"matrixinfer_gateway_requests_total{{{labels}}} {value}")
    lines += [
        "# HELP matrixinfer_gateway_request_duration_seconds Latency.",
        "# TYPE matrixinfer_gateway_request_duration_seconds histogram",
    ]
    for model, per_bucket in buckets.items():
        total = 0.0
        for le, n in zip([*map(str, BUCKETS), "+Inf"], per_bucket, strict=True):
            total += n
            lines.append(
                "matrixinfer_gateway_request_duration_seconds_bucket"
                f'{{le="{le}",model="{model}"}} {total}'
            )
        lines.append(
            f'matrixinfer_gateway_request_duration_seconds_count{{model="{model}"}} '
            f"{total}"
        )
        lines.append(
            f'matrixinfer_gateway_request_duration_seconds_sum{{model="{model}"}} 1.0'
        )
    return "\n".join(lines) + "\n"


BEFORE = metrics(
    {("iris", "OK"): 100, ("iris", "UNAVAILABLE"): 2, ("<unrouted>", "NOT_FOUND"): 5},
    {"iris": [50, 30, 20, 2, 0, 0], "<unrouted>": [5, 0, 0, 0, 0, 0]},
)
# 200 more iris requests in 2 s: 100 under 1 ms, 80 in (1, 2] ms, 18 in (2, 5] ms,
# 2 in (5, 10] ms.
AFTER = metrics(
    {("iris", "OK"): 298, ("iris", "UNAVAILABLE"): 4, ("<unrouted>", "NOT_FOUND"): 5},
    {"iris": [150, 110, 38, 4, 0, 0], "<unrouted>": [5, 0, 0, 0, 0, 0]},
)


def test_rate_sums_every_status_code() -> None:
    before, after = parse_metrics(BEFORE), parse_metrics(AFTER)
    assert rate(before, after, "iris", 2.0) == pytest.approx(100.0)
    assert rate(before, after, "<unrouted>", 2.0) == 0.0
    assert rate(before, after, "absent", 2.0) is None


def test_a_counter_that_went_back_is_unknown() -> None:
    assert rate(parse_metrics(AFTER), parse_metrics(BEFORE), "iris", 2.0) is None


def test_quantiles_interpolate_inside_the_bucket_of_the_rank() -> None:
    before, after = parse_metrics(BEFORE), parse_metrics(AFTER)
    old, new = before.buckets["iris"], after.buckets["iris"]
    # p50: rank 100 of 200 is the last of the first bucket: its upper bound.
    assert quantile(0.5, old, new) == pytest.approx(0.001)
    # p99: rank 198 falls in (0.002, 0.005] holding 181..198: its upper end.
    assert quantile(0.99, old, new) == pytest.approx(0.005)
    # p95: rank 190, the 10th of 18 in (0.002, 0.005].
    assert quantile(0.95, old, new) == pytest.approx(0.002 + 0.003 * 10 / 18)
    # p25: rank 50 is halfway through the first bucket (lower bound 0).
    assert quantile(0.25, old, new) == pytest.approx(0.0005)


def test_quantile_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    before = [(0.1, 0.0), (math.inf, 0.0)]
    after = [(0.1, 1.0), (math.inf, 10.0)]
    assert quantile(0.99, before, after) == 0.1


def test_no_new_observations_is_unknown() -> None:
    after = parse_metrics(AFTER).buckets["iris"]
    assert quantile(0.5, after, after) is None
    assert quantile(0.5, [], []) is None


def test_batch_size_from_statistics_deltas() -> None:
    def stats(inferences: int, executions: int) -> dict[str, object]:
        return {
            "model_stats": [
                {
                    "name": "iris",
                    "version": "1",
                    "inference_count": str(inferences),
                    "execution_count": str(executions),
                }
            ]
        }

    assert batch_size(stats(100, 50), stats(500, 100)) == pytest.approx(8.0)
    assert batch_size(stats(100, 50), stats(100, 50)) is None  # idle
    assert batch_size(None, stats(1, 1)) is None
    assert batch_size(stats(500, 100), stats(100, 50)) is None  # another replica
    assert batch_size({"model_stats": []}, stats(1, 1)) is None


def _obj(kind: str, name: str, **fields: object) -> dict[str, object]:
    return {"kind": kind, "metadata": {"name": name, "namespace": "default"}, **fields}


ROUTES = [
    _obj(
        "ModelRoute",
        "iris",
        spec={
            "modelName": "iris",
            "rules": [{"targets": [{"modelServer": "iris"}, {"modelServer": "iris2"}]}],
        },
    )
]
SERVERS = [
    _obj("ModelServer", "iris", spec={"modelInferRef": "iris"}),
    _obj("ModelServer", "iris2", spec={"modelInferRef": "iris-canary"}),
]
INFERS = [
    _obj(
        "ModelInfer",
        "iris",
        spec={"replicas": 2},
        status={"observedGeneration": "1", "readyReplicas": 2, "desiredReplicas": 2},
    ),
    _obj(
        "ModelInfer",
        "iris-canary",
        spec={"replicas": 1},
        status={"observedGeneration": "1", "desiredReplicas": 1},
    ),
    _obj("ModelInfer", "lonely", spec={"replicas": 1}),
]


def test_rows_per_public_model_with_the_modelinfers_behind_it() -> None:
    rows = build_rows(ROUTES, SERVERS, INFERS, ["iris", "<unrouted>", "ghost"])
    assert [(r.model, r.infers, r.ready, r.desired) for r in rows] == [
        ("iris", ["iris", "iris-canary"], 2, 3),
        ("-", ["lonely"], 0, 1),
        ("ghost", [], None, None),
    ]


def test_table_fills_what_is_known_and_dashes_the_rest() -> None:
    rows = build_rows(ROUTES, SERVERS, INFERS, ["iris"])
    stats_before = {"iris": {"model_stats": [{"inference_count": "10",
                                               "execution_count": "5"}]}}  # fmt: skip
    stats_after = {"iris": {"model_stats": [{"inference_count": "410",
                                              "execution_count": "105"}]}}  # fmt: skip
    fill_metrics(
        rows, parse_metrics(BEFORE), parse_metrics(AFTER), 2.0, stats_before,
        stats_after,
    )  # fmt: skip
    assert format_rows(rows) == "\n".join(
        [
            "MODEL   MODELINFER         READY   RPS     LATENCY   BATCH",
            "iris    iris,iris-canary   2/3     100.0   1.00ms    4.0",
            "-       lonely             0/1     -       -         -",
        ]
    )


def test_without_gateway_metrics_everything_but_replicas_is_unknown() -> None:
    rows = [Row("iris", ["iris"], 1, 1)]
    fill_metrics(rows, None, None, 2.0, {}, {})
    assert format_rows(rows).splitlines()[1].split() == [
        "iris", "iris", "1/1", "-", "-", "-",
    ]  # fmt: skip


def test_haproxy_counters_add_to_the_rate_and_give_the_latency() -> None:
    def text(requests: float, seconds: float) -> str:
        return (
            "# TYPE matrixinfer_gateway_dataplane_requests_total counter\n"
            "matrixinfer_gateway_dataplane_requests_total"
            f'{{code="2xx",model="iris",protocol="grpc",server="iris"}} {requests}\n'
            "# TYPE matrixinfer_gateway_dataplane_response_time_seconds gauge\n"
            "matrixinfer_gateway_dataplane_response_time_seconds"
            f'{{model="iris",protocol="grpc",server="iris"}} {seconds}\n'
            "matrixinfer_gateway_dataplane_response_time_seconds"
            f'{{model="iris",protocol="http",server="iris"}} 0.0\n'
        )

    before, after = (
        parse_metrics(BEFORE + text(1000, 0.002)),
        parse_metrics(AFTER + text(1600, 0.003)),
    )
    rows = [Row("iris", ["iris"], 1, 1)]
    fill_metrics(rows, before, after, 2.0, {}, {})
    # 200 answered by the slow path and 600 by HAProxy in 2 s; HAProxy's average.
    assert rows[0].rps == pytest.approx(400.0)
    assert rows[0].latency == pytest.approx(0.003)


def test_parses_what_prometheus_client_exposes() -> None:
    """The gateway's metrics as prometheus_client writes them (with _created
    samples and the counter's TYPE line), not only our hand-written text."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    registry = CollectorRegistry()
    requests = Counter(
        "matrixinfer_gateway_requests", "", ["model", "code"], registry=registry
    )
    duration = Histogram(
        "matrixinfer_gateway_request_duration_seconds", "", ["model"],
        buckets=BUCKETS, registry=registry,
    )  # fmt: skip
    before = parse_metrics(generate_latest(registry).decode())
    requests.labels("iris", "OK").inc(3)
    requests.labels("iris", "NOT_FOUND").inc()
    for seconds in (0.0015, 0.0015, 0.003, 0.05):
        duration.labels("iris").observe(seconds)
    after = parse_metrics(generate_latest(registry).decode())
    assert rate(before, after, "iris", 2.0) == pytest.approx(2.0)
    assert quantile(0.5, before.buckets.get("iris", []), after.buckets["iris"]) == (
        pytest.approx(0.002)
    )
