"""``matrixinfer top``: per model, replicas ready/desired (registry), requests per
second and latency (two scrapes of the gateway's /metrics: HAProxy's counters and
its average time over its last 1,024 requests per model, plus what the gateway's
slow path answered itself) and the average batch size Triton formed (two reads of
the gateway's KServe v2 statistics).

The calculations are pure functions of the scraped text, so they are tested on
canned metrics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import click

from matrixinfer.cli import render
from matrixinfer.cli.client import App, CliError, as_dict
from matrixinfer.cli.resources import namespace_option

REQUESTS = "matrixinfer_gateway_requests"
DATAPLANE_REQUESTS = "matrixinfer_gateway_dataplane_requests"
DATAPLANE_TIME = "matrixinfer_gateway_dataplane_response_time_seconds"
DURATION = "matrixinfer_gateway_request_duration_seconds"
UNROUTED = "<unrouted>"
pass_app = click.make_pass_decorator(App)


@dataclass
class Scrape:
    """One read of the gateway's /metrics."""

    #: model → requests answered (every status code)
    requests: dict[str, float] = field(default_factory=dict)
    #: model → [(upper bound, cumulative count)], ascending, ending with +Inf
    #: (requests the gateway's slow path answered itself)
    buckets: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    #: model → HAProxy's average time of its last 1,024 requests (slowest backend)
    average: dict[str, float] = field(default_factory=dict)


def parse_metrics(text: str) -> Scrape:
    from prometheus_client.parser import text_string_to_metric_families

    scrape = Scrape()
    for family in text_string_to_metric_families(text):
        if family.name in (REQUESTS, DATAPLANE_REQUESTS):
            for s in family.samples:
                if s.name == family.name + "_total" and "model" in s.labels:
                    model = s.labels["model"]
                    scrape.requests[model] = scrape.requests.get(model, 0.0) + s.value
        elif family.name == DATAPLANE_TIME:
            for s in family.samples:
                if "model" in s.labels and s.value > 0:
                    model = s.labels["model"]
                    scrape.average[model] = max(scrape.average.get(model, 0.0), s.value)
        elif family.name == DURATION:
            for s in family.samples:
                if s.name == DURATION + "_bucket" and "model" in s.labels:
                    scrape.buckets.setdefault(s.labels["model"], []).append(
                        (float(s.labels["le"]), s.value)
                    )
    for buckets in scrape.buckets.values():
        buckets.sort()
    return scrape


def rate(before: Scrape, after: Scrape, model: str, seconds: float) -> float | None:
    """Requests per second between two scrapes; None when unknown (no data, or the
    counter went back: a restarted gateway or another worker answered)."""
    if model not in after.requests or seconds <= 0:
        return None
    delta = after.requests[model] - before.requests.get(model, 0.0)
    return delta / seconds if delta >= 0 else None


def quantile(
    q: float,
    before: Sequence[tuple[float, float]],
    after: Sequence[tuple[float, float]],
) -> float | None:
    """Prometheus's histogram_quantile over the bucket increases between two
    scrapes: linear inside the bucket holding the rank; the highest finite bound
    when it falls in +Inf. None without observations."""
    earlier = dict(before)
    deltas = [(le, count - earlier.get(le, 0.0)) for le, count in after]
    if not deltas or not math.isinf(deltas[-1][0]):
        return None
    if any(d < 0 for _, d in deltas):
        return None  # reset between the scrapes
    total = deltas[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for i, (le, cumulative) in enumerate(deltas):
        if cumulative >= rank:
            if math.isinf(le):
                return deltas[i - 1][0] if i > 0 else None
            inside = cumulative - below
            if inside <= 0:
                return le
            return lower + (le - lower) * (rank - below) / inside
        lower, below = le, cumulative
    return None


def stats_counts(stats: Mapping[str, Any] | None) -> tuple[int, int] | None:
    """(inference_count, execution_count) of a KServe v2 statistics response,
    summed over its versions."""
    if not stats:
        return None
    entries = stats.get("model_stats")
    if not isinstance(entries, list) or not entries:
        return None
    inferences = sum(int(e.get("inference_count", 0) or 0) for e in entries)
    executions = sum(int(e.get("execution_count", 0) or 0) for e in entries)
    return inferences, executions


def batch_size(
    before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
) -> float | None:
    """Average batch Triton executed between two statistics reads: inferences per
    execution. None when unknown or idle."""
    a, b = stats_counts(before), stats_counts(after)
    if a is None or b is None:
        return None
    inferences, executions = b[0] - a[0], b[1] - a[1]
    if executions <= 0 or inferences < 0:
        return None
    return inferences / executions


@dataclass
class Row:
    model: str
    infers: list[str]
    ready: int | None = None
    desired: int | None = None
    rps: float | None = None
    latency: float | None = None
    batch: float | None = None


def _seconds(value: float | None) -> str:
    if value is None:
        return render.MISSING
    ms = value * 1000
    return (
        f"{ms:.2f}ms" if ms < 10 else f"{ms:.0f}ms" if ms < 10_000 else f"{value:.0f}s"
    )


def _number(value: float | None, digits: int = 1) -> str:
    return render.MISSING if value is None else f"{value:.{digits}f}"


def format_rows(rows: Sequence[Row]) -> str:
    header = ("MODEL", "MODELINFER", "READY", "RPS", "LATENCY", "BATCH")
    lines = [
        [
            r.model,
            ",".join(r.infers) or render.MISSING,
            render.MISSING if r.ready is None else f"{r.ready}/{r.desired}",
            _number(r.rps),
            _seconds(r.latency),
            _number(r.batch),
        ]
        for r in rows
    ]
    return "\n".join(render.format_table(header, lines))


def build_rows(
    routes: Sequence[dict[str, Any]],
    servers: Sequence[dict[str, Any]],
    infers: Sequence[dict[str, Any]],
    metric_models: Sequence[str] = (),
) -> list[Row]:
    """One row per public model name (ModelRoute.modelName) with the ModelInfers
    its targets reach, then one per ModelInfer no route reaches (MODEL "-"), then
    models the gateway counted that no listed route has."""
    server_ref = {
        (s["metadata"].get("namespace", ""), s["metadata"]["name"]): s.get(
            "spec", {}
        ).get("modelInferRef", "")
        for s in servers
    }
    infer_by_key = {
        (i["metadata"].get("namespace", ""), i["metadata"]["name"]): i for i in infers
    }
    rows: dict[str, Row] = {}
    keys: dict[str, list[tuple[str, str]]] = {}
    for route in routes:
        ns = route["metadata"].get("namespace", "")
        model = route.get("spec", {}).get("modelName") or route["metadata"]["name"]
        row = rows.setdefault(model, Row(model, []))
        row_keys = keys.setdefault(model, [])
        for rule in route.get("spec", {}).get("rules", []):
            for target in rule.get("targets", []):
                ref = server_ref.get((ns, target.get("modelServer", "")))
                if ref and (ns, ref) in infer_by_key and (ns, ref) not in row_keys:
                    row_keys.append((ns, ref))
                    row.infers.append(ref)
    reached = {k for row_keys in keys.values() for k in row_keys}
    result = []
    for row in sorted(rows.values(), key=lambda r: r.model):
        row_keys = keys[row.model]
        if row_keys:
            row.ready = sum(
                int(render.get_path(infer_by_key[k], "status.readyReplicas", 0))
                for k in row_keys
            )
            row.desired = sum(
                render.desired_replicas(infer_by_key[k]) for k in row_keys
            )
        result.append(row)
    for key in sorted(set(infer_by_key) - reached):
        infer = infer_by_key[key]
        result.append(
            Row(
                render.MISSING,
                [key[1]],
                int(render.get_path(infer, "status.readyReplicas", 0)),
                render.desired_replicas(infer),
            )
        )
    for model in sorted(set(metric_models) - set(rows) - {UNROUTED}):
        result.append(Row(model, []))
    return result


def fill_metrics(
    rows: Sequence[Row],
    before: Scrape | None,
    after: Scrape | None,
    seconds: float,
    stats_before: Mapping[str, Mapping[str, Any] | None],
    stats_after: Mapping[str, Mapping[str, Any] | None],
) -> None:
    for row in rows:
        if row.model == render.MISSING:
            continue
        if before is not None and after is not None:
            row.rps = rate(before, after, row.model, seconds)
            row.latency = after.average.get(row.model)
            buckets = after.buckets.get(row.model)
            if row.latency is None and buckets:
                # Only the slow path answered (e.g. a model scaled to zero).
                earlier = before.buckets.get(row.model, [])
                row.latency = quantile(0.5, earlier, buckets)
        row.batch = batch_size(stats_before.get(row.model), stats_after.get(row.model))


def _scrape(app: App) -> tuple[Scrape | None, str]:
    try:
        response = app.gateway.request("/metrics")
    except CliError as e:
        return None, e.message.removeprefix("error: ")
    if response.status != 200:
        return None, f"/metrics answered HTTP {response.status}"
    try:
        return parse_metrics(response.body.decode(errors="replace")), ""
    except ValueError as e:
        return None, f"/metrics is not Prometheus text: {e}"


def _stats(app: App, models: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model in models:
        try:
            response = app.gateway.request(f"/v2/models/{model}/stats")
        except CliError:
            return out
        if response.status == 200:
            try:
                out[model] = response.json()
            except ValueError:
                pass
    return out


@click.command()
@namespace_option
@click.option("-A", "--all-namespaces", is_flag=True, help="Every namespace.")
@click.option(
    "--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
    help="Seconds between the two scrapes that rates and quantiles come from.",
)  # fmt: skip
@pass_app
def top(app: App, namespace: str | None, all_namespaces: bool, interval: float) -> None:
    """Per model: replicas ready/desired, requests per second, latency at the
    gateway and the average batch size Triton formed, over --interval seconds.

    Rates and latency come from the gateway's /metrics (latency: HAProxy's average
    over its last 1,024 requests of the model); batch size from its statistics,
    read only for models with ready replicas (reading them never wakes a model
    scaled to zero). "-" means unknown."""
    ns = "" if all_namespaces else app.namespace(namespace)
    registry = app.registry
    routes = [as_dict(r) for r in registry.list_objects("ModelRoute", ns)[0]]
    servers = [as_dict(s) for s in registry.list_objects("ModelServer", ns)[0]]
    infers = [as_dict(i) for i in registry.list_objects("ModelInfer", ns)[0]]
    before, why = _scrape(app)
    first_at = time.monotonic()
    rows = build_rows(routes, servers, infers, list(before.requests) if before else [])
    live = [r.model for r in rows if r.ready and r.model != render.MISSING]
    stats_before = _stats(app, live) if before is not None else {}
    time.sleep(interval)
    after, why_after = _scrape(app) if before is not None else (None, why)
    seconds = time.monotonic() - first_at
    stats_after = _stats(app, live) if after is not None else {}
    fill_metrics(rows, before, after, seconds, stats_before, stats_after)
    if not rows:
        click.echo("No models found.", err=True)
        return
    click.echo(format_rows(rows))
    if before is None or after is None:
        click.echo(
            f"warning: no gateway metrics ({why or why_after}); RPS, latency and "
            "batch size are unknown",
            err=True,
        )
