"""Gateway benchmark (not a test): ``python -m bench.gateway``.

One iris replica (real tritonserver, dynamic batching) started by the real registry
and controller in this process; the gateway runs as its own process, and HAProxy
(its data plane, which it starts) carries the requests, with auth on (an API key
looked up by HAProxy), a per-tenant rate limit checked on every request and metrics
on. The load is h2load (nghttp2) sending a pre-serialized KServe v2 ModelInfer
request as gRPC, for a fixed time, directly to Triton and through the gateway in
the same run: one connection with 32 streams, and 8 connections with 4 streams
each; also through a route whose public name differs from Triton's (HAProxy's Lua
filter renames the model in the body). Added latency at one request at a time is
measured with a gRPC client (percentiles). REST: h2load over HTTP/1.1 (32
connections) and the same latency measurement. Reported: throughput and its ratio
to direct, data-plane CPU µs per request (HAProxy's processes, and the gateway's
Python process separately, from /proc, divided by the requests HAProxy counted),
Triton's average batch size (its own statistics). Figures go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import multiprocessing
import os
import pathlib
import re
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from bench.gateway.load import PATH, load, load_rest, request_bytes, rest_body
from bench.platform import ready, start_platform, stop, wait_for
from bench.report import ROOT, machine_line, write_section
from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.api.v1 import registry_pb2_grpc
from matrixinfer.core.ports import free_ports
from matrixinfer.core.process import pids_matching

ROUTE = """  rules:
    - targets: [{modelServer: iris}]"""
# Limits are on (checked per request) but far above what this machine can send.
LIMITED_ROUTE = (
    ROUTE
    + """
  rateLimit: {requestsPerSecond: 1000000, burst: 1000000, per: tenant}"""
)
RENAMED = """
---
apiVersion: networking.matrixinfer.ai/v1alpha1
kind: ModelRoute
metadata:
  name: flowers
spec:
  modelName: flowers
  rules:
    - targets: [{modelServer: iris}]
  rateLimit: {requestsPerSecond: 1000000, burst: 1000000, per: tenant}
"""


def cpu_seconds(pid: int) -> float:
    try:
        text = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def haproxy_pids(directory: pathlib.Path) -> list[int]:
    """HAProxy's master and workers: their command lines name the config file."""
    return pids_matching("haproxy", str(directory))


def frontend_requests(directory: pathlib.Path, frontend: str) -> int:
    """Requests HAProxy's frontend has seen (runtime API, `show stat`)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(directory / "admin.sock"))
        sock.sendall(b"show stat\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    rows = csv.DictReader(io.StringIO(data.decode().lstrip("# ")))
    for row in rows:
        if row["pxname"] == frontend and row["svname"] == "FRONTEND":
            return int(row["req_tot"] or 0)
    raise RuntimeError(f"no frontend {frontend}")


async def triton_batches(address: str) -> tuple[int, int]:
    async with grpc.aio.insecure_channel(address) as channel:
        stats = await service_pb2_grpc.GRPCInferenceServiceStub(
            channel
        ).ModelStatistics(service_pb2.ModelStatisticsRequest(name="iris"))
    model = stats.model_stats[0]
    return model.inference_count, model.execution_count


@dataclass
class Point:
    rps: float
    failures: int
    batch: float
    haproxy_us: float = 0.0
    gateway_us: float = 0.0


_FINISHED = re.compile(r"finished in ([\d.]+)s, ([\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed"
)


def h2load(
    url: str, body: pathlib.Path, headers: list[str], clients: int, streams: int,
    seconds: float, h1: bool = False,
) -> tuple[float, int]:  # fmt: skip
    """(req/s, failed) of one h2load run (1 s of warm-up not counted)."""
    cmd = ["h2load", "-D", str(round(seconds)), "--warm-up-time", "1"]
    if h1:
        cmd.append("--h1")
    cmd += ["-c", str(clients), "-m", str(streams), "-d", str(body)]
    for header in headers:
        cmd += ["-H", header]
    out = subprocess.run(
        [*cmd, url], capture_output=True, text=True, check=True, timeout=seconds + 60
    ).stdout
    finished, requests = _FINISHED.search(out), _REQUESTS.search(out)
    if finished is None or requests is None:
        raise RuntimeError(f"h2load said: {out}")
    return float(finished.group(2)), int(requests.group(5))


async def measure(
    run: Callable[[], tuple[float, int]],
    triton: str,
    directory: pathlib.Path | None,
    gateway_pid: int | None,
    frontend: str,
) -> Point:
    batches0 = await triton_batches(triton)
    pids = haproxy_pids(directory) if directory else []
    cpu0 = sum(cpu_seconds(p) for p in pids)
    gw0 = cpu_seconds(gateway_pid) if gateway_pid else 0.0
    count0 = frontend_requests(directory, frontend) if directory else 0
    rps, failed = await asyncio.to_thread(run)
    batches1 = await triton_batches(triton)
    point = Point(
        rps,
        failed,
        (batches1[0] - batches0[0]) / max(1, batches1[1] - batches0[1]),
    )
    if directory is not None and gateway_pid is not None:
        count = max(1, frontend_requests(directory, frontend) - count0)
        point.haproxy_us = (sum(cpu_seconds(p) for p in pids) - cpu0) / count * 1e6
        point.gateway_us = (cpu_seconds(gateway_pid) - gw0) / count * 1e6
    return point


async def latency(
    target: Callable[..., None], address: str, seconds: float, api_key: str = ""
) -> tuple[float, float, int]:
    """(p50 ms, p99 ms, failures) at one request at a time, from a Python client in
    its own process."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(address, 1, seconds, queue, api_key))
    process.start()
    _, failures, p50, p99 = await asyncio.to_thread(queue.get)
    process.join()
    return p50 * 1000, p99 * 1000, failures


def pct(value: float, base: float) -> str:
    return f"{value / base * 100:.0f} %" if base else "-"


def met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


async def main_async(args: argparse.Namespace) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        dataplane = work / "dataplane"
        registry, controller, registry_channel = await start_platform(work, fake=False)
        grpc_port, http_port = free_ports(2)
        env = {
            **os.environ,
            "MATRIXINFER_GATEWAY_REGISTRY_ADDRESS": registry.address,
            "MATRIXINFER_GATEWAY_GRPC_PORT": str(grpc_port),
            "MATRIXINFER_GATEWAY_HTTP_PORT": str(http_port),
            "MATRIXINFER_GATEWAY_AUTH_MODE": "required",
            "MATRIXINFER_GATEWAY_LOG_LEVEL": "WARNING",
            "MATRIXINFER_GATEWAY_DATAPLANE_DIR": str(dataplane),
            "MATRIXINFER_GATEWAY_DATAPLANE_THREADS": str(args.threads),
        }
        gateway = subprocess.Popen(
            [sys.executable, "-m", "matrixinfer.gateway"], env=env
        )
        try:
            manifest = (
                (ROOT / "examples/iris/manifests.yaml")
                .read_text()
                .replace(
                    "file://${IRIS_MODEL}",
                    f"file://{ROOT / 'examples/iris/model.onnx'}",
                )
                .replace(ROUTE, LIMITED_ROUTE)
            ) + RENAMED
            async with grpc.aio.insecure_channel(registry.address) as channel:
                stub = registry_pb2_grpc.RegistryStub(channel)
                await stub.Apply(rpb.ApplyRequest(manifest=manifest))
                key = (
                    await stub.CreateApiKey(
                        rpb.CreateApiKeyRequest(
                            subject="bench", scopes=["infer:*"], tenant="bench"
                        )
                    )
                ).secret
                await wait_for(stub, "iris", ready(1))
                infer = (
                    await stub.Get(rpb.GetRequest(kind="ModelInfer", name="iris"))
                ).model_infer
            endpoint = infer.status.endpoints[0]
            triton = f"{endpoint.address}:{endpoint.grpc_port}"
            triton_http = f"{endpoint.address}:{endpoint.http_port}"
            through = f"127.0.0.1:{grpc_port}"
            for name in ("iris", "flowers"):  # up, routing, answering OK
                for _ in range(200):
                    try:
                        async with grpc.aio.insecure_channel(through) as channel:
                            await channel.unary_unary(PATH)(
                                request_bytes(name),
                                timeout=2,
                                metadata=(("x-api-key", key),),
                            )
                        break
                    except grpc.aio.AioRpcError:
                        await asyncio.sleep(0.1)
                else:
                    raise RuntimeError(f"the gateway never served {name}")
            bodies = {}
            for name in ("iris", "flowers"):
                raw = request_bytes(name)
                bodies[name] = work / f"{name}.bin"
                bodies[name].write_bytes(b"\0" + len(raw).to_bytes(4, "big") + raw)
            rest_file = work / "rest.json"
            rest_file.write_bytes(rest_body())
            grpc_headers = ["content-type: application/grpc", "te: trailers"]
            auth = [f"x-api-key: {key}"]

            def grpc_run(
                address: str, name: str, clients: int, streams: int, headers: list[str]
            ) -> Callable[[], tuple[float, int]]:
                return lambda: h2load(
                    f"http://{address}{PATH}", bodies[name], headers,
                    clients, streams, args.seconds,
                )  # fmt: skip

            shapes = [(1, 32), (8, 4)]
            grpc_points: list[tuple[str, Point, Point, Point]] = []
            for clients, streams in shapes:
                direct = await measure(
                    grpc_run(triton, "iris", clients, streams, grpc_headers),
                    triton, None, None, "grpc",
                )  # fmt: skip
                proxied = await measure(
                    grpc_run(through, "iris", clients, streams, grpc_headers + auth),
                    triton, dataplane, gateway.pid, "grpc",
                )  # fmt: skip
                renamed = await measure(
                    grpc_run(through, "flowers", clients, streams, grpc_headers + auth),
                    triton, dataplane, gateway.pid, "grpc",
                )  # fmt: skip
                label = f"{clients} connection(s) × {streams} streams"
                print(
                    f"gRPC {label}: {direct}\n  gateway {proxied}\n  renamed {renamed}"
                )
                grpc_points.append((label, direct, proxied, renamed))
            lat_direct = await latency(load, triton, args.seconds)
            lat_gateway = await latency(load, through, args.seconds, key)

            rest_url = "/v2/models/iris/infer"
            json_header = ["content-type: application/json"]

            def rest_run(
                address: str, headers: list[str]
            ) -> Callable[[], tuple[float, int]]:
                return lambda: h2load(
                    f"http://{address}{rest_url}", rest_file, headers, 32, 1,
                    args.seconds, h1=True,
                )  # fmt: skip

            rest_direct = await measure(
                rest_run(triton_http, json_header), triton, None, None, "rest"
            )
            rest_gateway = await measure(
                rest_run(f"127.0.0.1:{http_port}", json_header + auth),
                triton, dataplane, gateway.pid, "rest",
            )  # fmt: skip
            print(f"REST: {rest_direct}\n  gateway {rest_gateway}")
            rest_lat_direct = await latency(
                load_rest, f"http://{triton_http}", args.seconds
            )
            rest_lat_gateway = await latency(
                load_rest, f"http://127.0.0.1:{http_port}", args.seconds, key
            )
        finally:
            gateway.terminate()
            gateway.wait(timeout=30)
            await stop(registry, controller, registry_channel)
    return report(
        args, grpc_points, lat_direct, lat_gateway,
        (rest_direct, rest_gateway), (rest_lat_direct, rest_lat_gateway),
    )  # fmt: skip


def report(
    args: argparse.Namespace,
    grpc_points: list[tuple[str, Point, Point, Point]],
    lat_direct: tuple[float, float, int],
    lat_gateway: tuple[float, float, int],
    rest: tuple[Point, Point],
    rest_latency: tuple[tuple[float, float, int], tuple[float, float, int]],
) -> list[str]:
    rows = []
    for label, direct, proxied, renamed in grpc_points:
        rows.append(
            f"| {label} | {direct.rps:.0f} | {proxied.rps:.0f} "
            f"({pct(proxied.rps, direct.rps)}) | {renamed.rps:.0f} "
            f"({pct(renamed.rps, direct.rps)}) | {proxied.haproxy_us:.0f} "
            f"| {renamed.haproxy_us:.0f} | {proxied.gateway_us:.1f} "
            f"| {direct.batch:.1f} / {proxied.batch:.1f} "
            f"| {direct.failures + proxied.failures + renamed.failures} |"
        )
    one, eight = grpc_points[0], grpc_points[1]
    cpu = one[2].haproxy_us + one[2].gateway_us
    added = lat_gateway[0] - lat_direct[0]
    batch_ratio = one[2].batch / one[1].batch if one[1].batch else 0.0
    rest_direct, rest_gateway = rest
    (rd50, rd99, rdf), (rg50, rg99, rgf) = rest_latency
    return [
        "Command: `python -m bench.gateway`  ",
        f"{machine_line()}; one iris replica (Python backend + ONNX Runtime, dynamic "
        f"batching), {args.seconds:.0f} s per point after 1 s of warm-up, load from "
        "h2load (nghttp2) with a pre-serialized ModelInfer; the gateway as its own "
        f"process with HAProxy 2.6 (its data plane, {args.threads or 'default'} "
        "thread(s)) carrying the "
        "requests; **auth on (API key), a per-tenant rate limit checked on every "
        "request, metrics on**; HAProxy to the replica in plaintext (the platform "
        "runs without TLS files here, so without mTLS to the replicas). Direct = "
        "the same load at the replica's own port, "
        "in the same run. Data-plane CPU = HAProxy's master and worker processes; "
        "the gateway's Python process (control plane, not on the path) separately; "
        "both per request HAProxy counted.",
        "",
        "gRPC:",
        "",
        "| load | direct req/s | gateway req/s (of direct) | renamed route req/s "
        "(of direct) | HAProxy CPU µs/req | HAProxy CPU µs/req, renamed "
        "| gateway process CPU µs/req | Triton batch direct / gateway | failures |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"One request at a time (a Python gRPC client, {args.seconds:.0f} s): "
        f"p50/p99 direct {lat_direct[0]:.2f} / {lat_direct[1]:.2f} ms, through the "
        f"gateway {lat_gateway[0]:.2f} / {lat_gateway[1]:.2f} ms: **{added:+.2f} ms "
        f"at p50**; failures {lat_direct[2] + lat_gateway[2]}.",
        "",
        "REST (KServe v2 JSON; h2load over HTTP/1.1, 32 connections; direct = "
        "Triton's HTTP port):",
        "",
        "| direct req/s | gateway req/s (of direct) | HAProxy CPU µs/req "
        "| Triton batch direct / gateway | p50/p99 ms at one request, direct "
        "| same through the gateway | failures |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {rest_direct.rps:.0f} | {rest_gateway.rps:.0f} "
        f"({pct(rest_gateway.rps, rest_direct.rps)}) | {rest_gateway.haproxy_us:.0f} "
        f"| {rest_direct.batch:.1f} / {rest_gateway.batch:.1f} "
        f"| {rd50:.2f} / {rd99:.2f} | {rg50:.2f} / {rg99:.2f} "
        f"| {rest_direct.failures + rest_gateway.failures + rdf + rgf} |",
        "",
        "The aims of the data plane, as measured in this run:",
        "",
        f"- throughput ≥ 70 % of direct with one connection × 32 streams: "
        f"{pct(one[2].rps, one[1].rps)} — {met(one[2].rps >= 0.7 * one[1].rps)}",
        f"- throughput ≥ 80 % of direct with 8 connections: "
        f"{pct(eight[2].rps, eight[1].rps)} — "
        f"{met(eight[2].rps >= 0.8 * eight[1].rps)}",
        f"- ≤ 60 µs of data-plane CPU per request at 32 streams: {cpu:.0f} µs "
        f"(HAProxy {one[2].haproxy_us:.0f} + gateway process "
        f"{one[2].gateway_us:.1f}) — {met(cpu <= 60)}",
        f"- ≤ 0.3 ms added p50 at one request at a time: {added:+.2f} ms — "
        f"{met(added <= 0.3)}",
        f"- Triton's average batch through the gateway ≥ 90 % of direct: "
        f"{batch_ratio * 100:.0f} % — {met(batch_ratio >= 0.9)}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--threads", type=int, default=0, help="HAProxy threads (0: its default)"
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    lines = asyncio.run(main_async(args))
    print("\n".join(lines))
    if not args.no_write:
        write_section("gateway", "Gateway", lines)
        print("figures written to BENCHMARKS.md")


if __name__ == "__main__":
    main()
