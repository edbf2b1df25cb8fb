"""Gateway benchmark (not a test): ``python -m bench.gateway``.

One iris replica (real tritonserver, dynamic batching) started by the real registry
and controller in this process; the gateway runs as its own process (auth off, no
rate limit: the data path only), and the load generator in another process, so the
gateway's CPU per request can be read from /proc. For each concurrency (1, 8, 32) the
same client sends the same pre-serialized KServe v2 gRPC request for a fixed time
directly to Triton, then through the gateway, and reports throughput, latency
percentiles, gateway CPU µs per request and Triton's average batch size (from its own
statistics) both ways. Figures go to BENCHMARKS.md between markers.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import pathlib
import platform
import socket
import subprocess
import sys
import tempfile
import time

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from bench.gateway.load import PATH, load, request_bytes
from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.api.v1 import registry_pb2_grpc
from matrixinfer.controller.main import ControllerApp
from matrixinfer.controller.settings import ControllerSettings
from matrixinfer.registry.main import RegistryApp
from matrixinfer.registry.settings import RegistrySettings

ROOT = pathlib.Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- bench.gateway:begin -->", "<!-- bench.gateway:end -->"


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
    address: str, triton: str, concurrency: int, seconds: float, gateway_pid: int | None
) -> dict[str, float]:
    # spawn, not fork: forking a process that runs gRPC threads can hang the child.
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    inferences0, executions0 = await triton_batches(triton)
    cpu0 = cpu_seconds(gateway_pid) if gateway_pid else 0.0
    process = context.Process(target=load, args=(address, concurrency, seconds, queue))
    process.start()
    count, failures, p50, p99 = await asyncio.to_thread(queue.get)
    process.join()
    cpu = (cpu_seconds(gateway_pid) - cpu0) if gateway_pid else 0.0
    inferences1, executions1 = await triton_batches(triton)
    batch = (inferences1 - inferences0) / max(1, executions1 - executions0)
    return {
        "rps": count / seconds,
        "failures": failures,
        "p50_ms": p50 * 1000,
        "p99_ms": p99 * 1000,
        "cpu_us": cpu / max(1, count) * 1e6 if gateway_pid else 0.0,
        "batch": batch,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def main_async(args: argparse.Namespace) -> list[str]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        registry = await RegistryApp.start(
            RegistrySettings(
                database_url=f"sqlite+aiosqlite:///{work}/r.db",
                grpc_port=0,
                log_level="WARNING",
            )
        )
        controller = await ControllerApp.start(
            ControllerSettings(
                registry_address=registry.address,
                grpc_port=0,
                state_dir=work / "c",
                log_level="WARNING",
            )
        )
        gateway_port, http_port = free_port(), free_port()
        env = {
            **os.environ,
            "MATRIXINFER_GATEWAY_REGISTRY_ADDRESS": registry.address,
            "MATRIXINFER_GATEWAY_GRPC_PORT": str(gateway_port),
            "MATRIXINFER_GATEWAY_HTTP_PORT": str(http_port),
            "MATRIXINFER_GATEWAY_AUTH_MODE": "off",
            "MATRIXINFER_GATEWAY_LOG_LEVEL": "WARNING",
            "MATRIXINFER_GATEWAY_WORKERS": str(args.workers),
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
            )
            async with grpc.aio.insecure_channel(registry.address) as channel:
                stub = registry_pb2_grpc.RegistryStub(channel)
                await stub.Apply(rpb.ApplyRequest(manifest=manifest))
                while True:
                    infer = (
                        await stub.Get(rpb.GetRequest(kind="ModelInfer", name="iris"))
                    ).model_infer
                    if infer.status.ready_replicas == 1:
                        break
                    await asyncio.sleep(0.1)
            endpoint = infer.status.endpoints[0]
            triton = f"{endpoint.address}:{endpoint.grpc_port}"
            through = f"127.0.0.1:{gateway_port}"
            for _ in range(100):  # gateway up and routing
                try:
                    async with grpc.aio.insecure_channel(through) as channel:
                        await channel.unary_unary(PATH)(request_bytes(), timeout=2)
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.1)
            for concurrency in args.concurrency:
                direct = await measure(triton, triton, concurrency, args.seconds, None)
                proxied = await measure(
                    through, triton, concurrency, args.seconds, gateway.pid
                )
                print(
                    f"c={concurrency}: direct {direct}\n      gateway {proxied}",
                    flush=True,
                )
                added = proxied["p50_ms"] - direct["p50_ms"]
                cells = [
                    str(concurrency),
                    f"{direct['rps']:.0f}",
                    f"{proxied['rps']:.0f}",
                    f"{proxied['rps'] / direct['rps'] * 100:.0f} %",
                    f"{direct['p50_ms']:.2f} / {direct['p99_ms']:.2f}",
                    f"{proxied['p50_ms']:.2f} / {proxied['p99_ms']:.2f}",
                    f"{added:+.2f}",
                    f"{proxied['cpu_us']:.0f}",
                    f"{direct['batch']:.1f} / {proxied['batch']:.1f}",
                    str(int(direct["failures"] + proxied["failures"])),
                ]
                rows.append("| " + " | ".join(cells) + " |")
        finally:
            gateway.terminate()
            gateway.wait(timeout=30)
            await controller.stop(0)
            await registry.stop(0)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--workers", type=int, default=1, help="gateway processes")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rows = asyncio.run(main_async(args))
    measured = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        BEGIN,
        "Command: `python -m bench.gateway`  ",
        f"Measured: {measured} on {platform.machine()}, {os.cpu_count()} CPUs; gRPC, "
        "one iris replica (Python backend + ONNX Runtime, dynamic batching), "
        f"{args.seconds:.0f} s per point, one load process (Python grpc.aio, "
        f"pre-serialized request), the gateway with {args.workers} worker process(es), "
        "auth off and no rate limit. Gateway CPU counts the first worker's process "
        "only, so it is exact only with one worker.",
        "",
        "| concurrency | direct req/s | gateway req/s | ratio | direct p50/p99 ms "
        "| gateway p50/p99 ms | added p50 ms | gateway CPU µs/req "
        "| Triton batch direct/gateway | failures |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        END,
    ]
    print("\n".join(lines))
    if not args.no_write:
        path = ROOT / "BENCHMARKS.md"
        text = path.read_text()
        block = "\n".join(lines)
        if BEGIN in text:
            head, rest = text.split(BEGIN, 1)
            text = head + block + rest.split(END, 1)[1]
        else:
            text = text.rstrip() + "\n\n## Gateway\n\n" + block + "\n"
        path.write_text(text)


if __name__ == "__main__":
    main()
