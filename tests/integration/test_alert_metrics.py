"""Every metric an alerting rule (deploy/prometheus/alerts.yml) or the Grafana
dashboard queries is exported by the running services, with the labels the query
names: not a static list, a scrape of each service's /metrics (and of a Triton
replica's, found through the file_sd file the controller writes) after traffic that
makes the per-model series appear.

A selector's metric must be a sample name some service exports (a histogram ``x`` is
queried as ``x_bucket``, a counter as ``x_total``: the names on the wire). With a
``job="..."`` matcher, that job's service must export it. Every label a selector
matches on must be on such a series (Prometheus adds ``job`` and ``instance``, and
for replicas the file_sd target labels); an ``=`` matcher's value must be there too.
``=~``/``!=``/``!~`` values are not required to occur: they select error codes that
only failures produce. Labels named in ``by``/``on``/... clauses are not checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import re
from collections.abc import Iterator

import aiohttp
import grpc
import numpy as np
import numpy.typing as npt
import tritonclient.grpc.aio as triton_grpc
import yaml
from tritonclient.utils import InferenceServerException

from matrixinfer.api.v1 import registry_pb2_grpc
from matrixinfer.autoscaler.main import AutoscalerApp
from matrixinfer.autoscaler.settings import AutoscalerSettings
from matrixinfer.controller.main import ControllerApp
from matrixinfer.controller.settings import ControllerSettings
from matrixinfer.registry.main import RegistryApp
from tests.conftest import ROOT, registry_settings
from tests.integration.autoscaler.test_autoscaler import POLICY
from tests.integration.conftest import (
    Platform,
    iris_manifests,
    start_gateway,
    wait_routed,
)
from tests.promql import Selector, queried

PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
#: Series Prometheus makes itself for every target of every job.
PROMETHEUS_BUILTINS = {"up"}
#: Metrics queried that no MatrixInfer service exports, and why. Keep this short.
NOT_OURS = {
    # CertificateExpiresSoon is written for when TLS lands: the metric comes from
    # the Prometheus blackbox exporter probing TLS endpoints, which is not deployed.
    "probe_ssl_earliest_cert_expiry": "blackbox exporter (for when TLS exists)",
}

#: A public name carried by the gateway's own path (a mirroring rule), so the
#: gateway's per-model request counter and latency histogram get series.
MIRRORED = """
---
apiVersion: networking.matrixinfer.ai/v1alpha1
kind: ModelRoute
metadata: {name: iris-mirrored}
spec:
  modelName: iris-mirrored
  rules:
    - targets: [{modelServer: iris}]
      mirror: {modelServer: iris, percent: 100}
"""
#: A ModelInfer whose artifact does not exist: its reconciles fail.
BROKEN = """
---
apiVersion: registry.matrixinfer.ai/v1alpha1
kind: Model
metadata: {name: broken}
spec:
  modelSpec:
    modelId: broken
    framework: onnx
    version: "1"
    source: {uri: "file:///nonexistent/matrixinfer/model.onnx"}
---
apiVersion: workload.matrixinfer.ai/v1alpha1
kind: ModelInfer
metadata: {name: broken}
spec:
  modelRef: {name: broken}
  replicas: 1
"""

Labels = dict[str, str]
#: job -> every sample scraped from its targets: (sample name, labels as Prometheus
#: would store them).
Scraped = dict[str, list[tuple[str, Labels]]]


_SAMPLE = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+\S+")
_LABEL = re.compile(r'\s*([A-Za-z_]\w*)="((?:\\.|[^"\\])*)"\s*,?')


def samples(text: str) -> Iterator[tuple[str, Labels]]:
    """(name, labels) of each sample in a text exposition, names as Prometheus
    stores them. (prometheus_client's parser is not used: it appends ``_total`` to
    counters that lack it, as Triton's do.)"""
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = _SAMPLE.match(line.strip())  # a timestamp may follow the value
        assert match is not None, f"cannot read the sample line {line!r}"
        labels = {
            k: re.sub(r"\\(.)", r"\1", v) for k, v in _LABEL.findall(match[2] or "")
        }
        yield match[1], labels


def scrape_jobs() -> set[str]:
    config = yaml.safe_load(PROMETHEUS.read_text())
    return {job["job_name"] for job in config["scrape_configs"]}


async def scrape(
    session: aiohttp.ClientSession, job: str, url: str, target: Labels
) -> list[tuple[str, Labels]]:
    async with session.get(url) as response:
        assert response.status == 200, url
        text = await response.text()
    instance = url.split("/")[2]
    return [
        (name, {**labels, **target, "job": job, "instance": instance})
        for name, labels in samples(text)
    ]


async def scrape_all(targets: dict[str, list[tuple[str, Labels]]]) -> Scraped:
    async with aiohttp.ClientSession() as session:
        return {
            job: [
                sample
                for url, labels in urls
                for sample in await scrape(session, job, url, labels)
            ]
            for job, urls in targets.items()
        }


def replica_targets(sd_file: pathlib.Path) -> list[tuple[str, Labels]]:
    """The Triton metrics endpoints in the controller's file_sd file."""
    groups = json.loads(sd_file.read_text()) if sd_file.exists() else []
    return [
        (f"http://{target}/metrics", dict(group["labels"]))
        for group in groups
        for target in group["targets"]
    ]


def fits(selector: Selector, labels: Labels) -> bool:
    for name, op, value in selector.matchers:
        if name not in labels:
            return False
        if op == "=" and labels[name] != value:
            return False
    return True


def problems(selector: Selector, scraped: Scraped) -> Iterator[str]:
    jobs = scrape_jobs()
    job = selector.equal("job")
    if selector.metric in PROMETHEUS_BUILTINS:
        for name, op, value in selector.matchers:
            if name == "job" and op in ("=", "=~"):
                wanted = value if op == "=" else f"(?:{value})"
                if not any(re.fullmatch(wanted, j) for j in jobs):
                    yield f"no job in prometheus.yml matches job{op}{value!r}"
        return
    if job is not None and job not in jobs:
        yield f"job {job!r} is not in prometheus.yml"
        return
    where = [job] if job is not None else sorted(scraped)
    series = [
        labels
        for j in where
        for name, labels in scraped.get(j, [])
        if name == selector.metric
    ]
    if not series:
        yield f"{selector.metric} is not exported (by {'/'.join(where)})"
    elif not any(fits(selector, labels) for labels in series):
        yield (
            f"{selector.metric}: no series has labels {selector.matchers}; "
            f"exported: {sorted({tuple(sorted(labels)) for labels in series})}"
        )


def missing(scraped: Scraped) -> list[str]:
    return [
        f"{problem} (queried in {', '.join(sorted(set(where)))})"
        for selector, where in queried().items()
        if selector.metric not in NOT_OURS
        for problem in problems(selector, scraped)
    ]


def iris_input(rows: npt.NDArray[np.float32]) -> list[triton_grpc.InferInput]:
    tensor = triton_grpc.InferInput("X", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    return [tensor]


async def traffic(address: str) -> None:
    """Calls through HAProxy (iris) and through the gateway's own path
    (iris-mirrored), with a right and a wrong input shape, and one to a name no
    route has."""
    client = triton_grpc.InferenceServerClient(address)
    try:
        good = iris_input(np.array([[6.7, 3.0, 5.2, 2.3]], dtype=np.float32))
        for model in ("iris", "iris-mirrored"):
            for _ in range(3):
                await client.infer(model, good)
        # Four features expected: five are refused.
        bad = iris_input(np.zeros((1, 5), dtype=np.float32))
        for model in ("iris", "iris-mirrored", "no-such-model"):
            with contextlib.suppress(InferenceServerException):
                await client.infer(model, bad)
    finally:
        await client.close()


async def test_every_queried_metric_is_exported(tmp_path: pathlib.Path) -> None:
    assert queried(), "no selectors found in alerts.yml and the dashboards"
    sd_file = tmp_path / "prometheus-sd" / "replicas.json"
    async with contextlib.AsyncExitStack() as stack:
        registry = await RegistryApp.start(
            registry_settings(
                f"sqlite+aiosqlite:///{tmp_path}/registry.db", metrics_port=0
            )
        )
        stack.push_async_callback(registry.stop, 0)
        controller = await ControllerApp.start(
            ControllerSettings(
                registry_address=registry.address,
                grpc_port=0,
                metrics_port=0,
                state_dir=tmp_path / "controller",
                prometheus_sd_file=sd_file,
                drain_s=0.5,
                stop_grace_s=3.0,
                resync_s=5.0,
                log_json=False,
            )
        )
        stack.push_async_callback(controller.stop, 0)
        channel = grpc.aio.insecure_channel(registry.address)
        stack.push_async_callback(channel.close)
        platform = Platform(
            registry, controller, registry_pb2_grpc.RegistryStub(channel)
        )
        gateway = await start_gateway(platform)
        stack.push_async_callback(gateway.stop, 0)
        autoscaler = await AutoscalerApp.start(
            AutoscalerSettings(
                registry_address=registry.address,
                controller_address=controller.address,
                grpc_port=0,
                metrics_port=0,
                tick_s=0.5,
                log_json=False,
            )
        )
        stack.push_async_callback(autoscaler.stop, 0)
        assert registry.metrics_server is not None
        assert controller.metrics_server is not None
        assert autoscaler.metrics_server is not None

        await platform.apply(
            iris_manifests() + POLICY.format(min=1, grace=2) + MIRRORED + BROKEN
        )
        await platform.wait_for(
            lambda i: i is not None and i.status.ready_replicas == 1, 90
        )
        await wait_routed(gateway)
        await wait_routed(gateway, "iris-mirrored")
        await traffic(gateway.address)

        def local(port: int) -> list[tuple[str, Labels]]:
            return [(f"http://127.0.0.1:{port}/metrics", {})]

        problems_now: list[str] = []
        for _ in range(60):  # HAProxy's counters are read four times a second
            scraped = await scrape_all(
                {
                    "registry": local(registry.metrics_server.port),
                    "controller": local(controller.metrics_server.port),
                    "gateway": [(f"{gateway.http_url}/metrics", {})],
                    "autoscaler": local(autoscaler.metrics_server.port),
                    "triton": replica_targets(sd_file),
                }
            )
            problems_now = missing(scraped)
            if not problems_now:
                break
            await asyncio.sleep(0.5)
        assert not problems_now, "\n".join(problems_now)
        assert scraped["triton"], "no replica in the controller's file_sd file"
        # Every job Prometheus scrapes (but itself) was scraped here.
        assert set(scraped) == scrape_jobs() - {"prometheus"}
    # The exceptions are still queried (else drop them from NOT_OURS).
    assert set(NOT_OURS) <= {s.metric for s in queried()}
    for metric, reason in NOT_OURS.items():
        print(f"not checked: {metric} ({reason})")
