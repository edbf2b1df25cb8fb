"""Gateway benchmark (not a test): ``python -m bench.gateway``.

One iris replica (real tritonserver, dynamic batching) started by the real registry
and controller in this process; the gateway runs as its own process with auth on (an
API key), a rate limit checked on every request and metrics, and the load generator
in another process, so the gateway's CPU per request can be read from /proc. For each
concurrency (1, 8, 32) the same client sends the same request for a fixed time
directly to Triton, through the gateway, and (gRPC) through a bare grpc.aio
pass-through with no logic, the floor of any Python gRPC proxy; then the same over
REST (KServe v2 JSON). It reports throughput, latency percentiles, CPU µs per request
of the proxy and Triton's average batch size (from its own statistics). Figures go to
BENCHMARKS.md between markers.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from bench.gateway.load import PATH, load, load_rest, request_bytes
from bench.platform import start_platform, stop
from bench.report import ROOT, machine_line, write_section
from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.api.v1 import registry_pb2_grpc


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def triton_batches(address: str) -> tuple[int, int]:
    async with grpc.aio.insecure_channel(address) as channel:
        stats = await service_pb2_grpc.GRPCInferenceServiceStub(
            channel
        ).ModelStatistics(service_pb2.ModelStatisticsRequest(name="iris"))
    model = stats.model_stats[0]
    return model.inference_count, model.execution_count


async def measure(
    target: Callable[..., None],
    address: str,
    triton: str,
    concurrency: int,
    seconds: float,
    pid: int | None,
    api_key: str = "",
) -> dict[str, float]:
    """One point: ``target`` (a load function of bench.gateway.load) in its own
    process against ``address``; CPU of process ``pid`` (the proxy) per request."""
    # spawn, not fork: forking a process that runs gRPC threads can hang the child.
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    inferences0, executions0 = await triton_batches(triton)
    cpu0 = cpu_seconds(pid) if pid else 0.0
    process = context.Process(
        target=target, args=(address, concurrency, seconds, queue, api_key)
    )
    process.start()
    count, failures, p50, p99 = await asyncio.to_thread(queue.get)
    process.join()
    cpu = (cpu_seconds(pid) - cpu0) if pid else 0.0
    inferences1, executions1 = await triton_batches(triton)
    batch = (inferences1 - inferences0) / max(1, executions1 - executions0)
    return {
        "rps": count / seconds,
        "failures": failures,
        "p50_ms": p50 * 1000,
        "p99_ms": p99 * 1000,
        "cpu_us": cpu / max(1, count) * 1e6 if pid else 0.0,
        "batch": batch,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


ROUTE = """  rules:
    - targets: [{modelServer: iris}]"""
# Limits are on (checked per request) but far above what this machine can send.
LIMITED_ROUTE = (
    ROUTE
    + """
  rateLimit: {requestsPerSecond: 1000000, burst: 1000000, per: tenant}"""
)


def cell(value: float, base: float) -> str:
    return f"{value:.0f} ({pct(value, base)})"


def pct(value: float, base: float) -> str:
    return f"{value / base * 100:.0f} %" if base else "-"


async def main_async(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    grpc_rows: list[str] = []
    rest_rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        registry, controller, registry_channel = await start_platform(work, fake=False)
        gateway_port, http_port, bare_port = free_port(), free_port(), free_port()
        env = {
            **os.environ,
            "MATRIXINFER_GATEWAY_REGISTRY_ADDRESS": registry.address,
            "MATRIXINFER_GATEWAY_GRPC_PORT": str(gateway_port),
            "MATRIXINFER_GATEWAY_HTTP_PORT": str(http_port),
            "MATRIXINFER_GATEWAY_AUTH_MODE": "required",
            "MATRIXINFER_GATEWAY_LOG_LEVEL": "WARNING",
            "MATRIXINFER_GATEWAY_WORKERS": str(args.workers),
        }
        gateway = subprocess.Popen(
            [sys.executable, "-m", "matrixinfer.gateway"], env=env
        )
        bare: subprocess.Popen[bytes] | None = None
        try:
            manifest = (
                (ROOT / "examples/iris/manifests.yaml")
                .read_text()
                .replace(
                    "file://${IRIS_MODEL}",
                    f"file://{ROOT / 'examples/iris/model.onnx'}",
                )
                .replace(ROUTE, LIMITED_ROUTE)
            )
            async with grpc.aio.insecure_channel(registry.address) as channel:
                stub = registry_pb2_grpc.RegistryStub(channel)
                await stub.Apply(rpb.ApplyRequest(manifest=manifest))
                key = (
                    await stub.CreateApiKey(
                        rpb.CreateApiKeyRequest(
                            subject="bench", scopes=["infer:iris"], tenant="bench"
                        )
                    )
                ).secret
                while True:
                    infer = (
                        await stub.Get(rpb.GetRequest(kind="ModelInfer", name="iris"))
                    ).model_infer
                    if infer.status.ready_replicas == 1:
                        break
                    await asyncio.sleep(0.1)
            endpoint = infer.status.endpoints[0]
            triton = f"{endpoint.address}:{endpoint.grpc_port}"
            triton_http = f"http://{endpoint.address}:{endpoint.http_port}"
            bare = subprocess.Popen(
                [sys.executable, "-m", "bench.gateway.load", str(bare_port), triton]
            )
            through = f"127.0.0.1:{gateway_port}"
            bare_address = f"127.0.0.1:{bare_port}"
            for address in (through, bare_address):  # up and routing
                for _ in range(100):
                    try:
                        async with grpc.aio.insecure_channel(address) as channel:
                            await channel.unary_unary(PATH)(
                                request_bytes(),
                                timeout=2,
                                metadata=(("x-api-key", key),),
                            )
                        break
                    except grpc.aio.AioRpcError:
                        await asyncio.sleep(0.1)
            for c in args.concurrency:
                direct = await measure(load, triton, triton, c, args.seconds, None)
                proxied = await measure(
                    load, through, triton, c, args.seconds, gateway.pid, key
                )
                floor = await measure(
                    load, bare_address, triton, c, args.seconds, bare.pid
                )
                print(f"gRPC c={c}: {direct}\n  gateway {proxied}\n  bare {floor}")
                grpc_rows.append(
                    "| "
                    + " | ".join(
                        [
                            str(c),
                            f"{direct['rps']:.0f}",
                            cell(proxied["rps"], direct["rps"]),
                            cell(floor["rps"], direct["rps"]),
                            f"{direct['p50_ms']:.2f} / {direct['p99_ms']:.2f}",
                            f"{proxied['p50_ms']:.2f} / {proxied['p99_ms']:.2f}",
                            f"{proxied['p50_ms'] - direct['p50_ms']:+.2f}",
                            f"{proxied['cpu_us']:.0f}",
                            f"{floor['cpu_us']:.0f}",
                            f"{direct['batch']:.1f} / {proxied['batch']:.1f}",
                            str(int(direct["failures"] + proxied["failures"])),
                        ]
                    )
                    + " |"
                )
            http_url = f"http://127.0.0.1:{http_port}"
            for c in args.concurrency:
                direct = await measure(
                    load_rest, triton_http, triton, c, args.seconds, None
                )
                proxied = await measure(
                    load_rest, http_url, triton, c, args.seconds, gateway.pid, key
                )
                print(f"REST c={c}: {direct}\n  gateway {proxied}")
                rest_rows.append(
                    "| "
                    + " | ".join(
                        [
                            str(c),
                            f"{direct['rps']:.0f}",
                            f"{proxied['rps']:.0f}",
                            pct(proxied["rps"], direct["rps"]),
                            f"{direct['p50_ms']:.2f} / {direct['p99_ms']:.2f}",
                            f"{proxied['p50_ms']:.2f} / {proxied['p99_ms']:.2f}",
                            f"{proxied['p50_ms'] - direct['p50_ms']:+.2f}",
                            f"{proxied['cpu_us']:.0f}",
                            f"{direct['batch']:.1f} / {proxied['batch']:.1f}",
                            str(int(direct["failures"] + proxied["failures"])),
                        ]
                    )
                    + " |"
                )
        finally:
            gateway.terminate()
            gateway.wait(timeout=30)
            if bare is not None:
                bare.terminate()
                bare.wait(timeout=30)
            await stop(registry, controller, registry_channel)
    return grpc_rows, rest_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--workers", type=int, default=1, help="gateway processes")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    grpc_rows, rest_rows = asyncio.run(main_async(args))
    lines = [
        "Command: `python -m bench.gateway`  ",
        f"{machine_line()}; one iris replica (Python backend + ONNX Runtime, dynamic "
        f"batching), {args.seconds:.0f} s per point, one load process (Python, one "
        f"connection), the gateway as its own process with {args.workers} worker(s), "
        "**auth on (API key), a rate limit checked on every request, metrics on**. "
        "*Bare pass-through*: a grpc.aio proxy of raw bytes with no logic at all "
        "(`bench/gateway/load.py`), the floor of a Python gRPC data path, measured in "
        "the same run. Gateway CPU counts the first worker only.",
        "",
        "gRPC (`tritonclient`'s ModelInfer, pre-serialized):",
        "",
        "| concurrency | direct req/s | gateway req/s (of direct) "
        "| bare pass-through req/s (of direct) | direct p50/p99 ms "
        "| gateway p50/p99 ms | added p50 ms | gateway CPU µs/req "
        "| bare CPU µs/req | Triton batch direct/gateway | failures |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *grpc_rows,
        "",
        "REST (KServe v2 JSON, as curl sends it; direct = Triton's HTTP port):",
        "",
        "| concurrency | direct req/s | gateway req/s | ratio | direct p50/p99 ms "
        "| gateway p50/p99 ms | added p50 ms | gateway CPU µs/req "
        "| Triton batch direct/gateway | failures |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rest_rows,
    ]
    print("\n".join(lines))
    if not args.no_write:
        write_section("gateway", "Gateway", lines)
        print("figures written to BENCHMARKS.md")


if __name__ == "__main__":
    main()
