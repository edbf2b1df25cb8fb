"""How often Triton continues an incoming ``traceparent`` over gRPC, and why not
always: ``python -m bench.traceparent [--requests N]`` (about a minute).

Triton's gRPC server hands the metadata value to OpenTelemetry as a C string
(``GrpcServerCarrier::Get`` returns ``string_ref::data()``, which is not
NUL-terminated; in 2.51 and still in 2.73), so the traceparent it parses runs on to
the next 0x00 byte after the value in gRPC's buffer. One Triton serving iris traces
every request (rate 1) to a collector in this process; N requests, each with its
own trace id, are sent three ways:

- ``direct``: tritonclient's gRPC stack straight to Triton (traceparent is the
  last header, so the bytes after it are usually the next frame's, 0x00 first);
- ``haproxy``: through a bare HAProxy 2.6 (h2 to h2), which re-encodes headers;
- ``haproxy+header-after``: the same HAProxy adding a ``user-agent`` header after
  traceparent, as a client whose headers come in another order would send it.

A request counts as continued when Triton's three spans (InferRequest, model,
compute) carry the caller's trace id. Writes the section to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import pathlib
import shutil
import subprocess
import tempfile

import grpc
from aiohttp import web
from tritonclient.grpc import service_pb2, service_pb2_grpc

from bench.report import ROOT, machine_line, write_section
from matrixinfer.core.ports import free_ports
from matrixinfer.triton.config import ServingConfig, Tensor
from matrixinfer.triton.install import find_tritonserver, python_paths
from matrixinfer.triton.python_models import onnx_runtime_model
from matrixinfer.triton.repository import write_model
from matrixinfer.triton.server import TritonProcess, allocate_ports

IRIS = ServingConfig(
    name="iris",
    backend="python",
    max_batch_size=64,
    inputs=(Tensor("X", "FP32", (4,)),),
    outputs=(Tensor("label", "INT64", (1,), ()), Tensor("probabilities", "FP32", (3,))),
)
TRITON_SPANS = {"InferRequest", "iris", "compute"}


class Collector:
    """Triton's OTLP/HTTP (JSON) exports, by trace id."""

    def __init__(self) -> None:
        self.spans: dict[str, set[str]] = collections.defaultdict(set)

    async def export(self, request: web.Request) -> web.Response:
        for resource in json.loads(await request.read())["resourceSpans"]:
            for scope in resource["scopeSpans"]:
                for span in scope["spans"]:
                    self.spans[span["traceId"]].add(span["name"])
        return web.json_response({})


def haproxy_config(port: int, triton: str, header_after: bool) -> str:
    extra = (
        "    http-request set-header traceparent %[req.fhdr(traceparent)]\n"
        "    http-request add-header user-agent bench\n"
        if header_after
        else ""
    )
    return (
        "defaults\n    mode http\n    timeout connect 5s\n"
        "    timeout client 30s\n    timeout server 30s\n"
        f"frontend f\n    bind 127.0.0.1:{port} proto h2\n{extra}"
        f"    default_backend b\nbackend b\n    server t {triton} proto h2\n"
    )


async def send(address: str, traces: list[str]) -> None:
    request = service_pb2.ModelInferRequest(model_name="iris")
    request.inputs.add(name="X", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(b"\x00\x00\x80\x3f" * 4)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for trace in traces:
            traceparent = f"00-{trace}-00f067aa0ba902b7-01"
            await stub.ModelInfer(
                request, metadata=(("traceparent", traceparent),), timeout=10
            )


async def measure(requests: int, work: pathlib.Path) -> dict[str, int]:
    collector = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", collector.export)
    runner = web.AppRunner(app)
    await runner.setup()
    (otlp_port,) = free_ports(1)
    await web.TCPSite(runner, "127.0.0.1", otlp_port).start()
    write_model(
        work / "repo",
        IRIS,
        1,
        {
            "model.py": onnx_runtime_model(python_paths()).encode(),
            "model.onnx": ROOT / "examples/iris/model.onnx",
        },
    )
    install = find_tritonserver()
    triton = TritonProcess(
        install=install,
        model_repository=work / "repo",
        backend_directory=install.prepare_backends(work / "backends"),
        ports=allocate_ports(),
        log_path=work / "triton.log",
        models=("iris",),
        extra_args=(
            "--trace-config=mode=opentelemetry",
            "--trace-config=rate=1",
            "--trace-config=level=TIMESTAMPS",
            f"--trace-config=opentelemetry,url=http://127.0.0.1:{otlp_port}/v1/traces",
        ),
    )
    sent: dict[str, list[str]] = {}
    await triton.start()
    try:
        await triton.wait_ready(timeout_s=60)
        for way, (prefix, through, after) in {
            "direct": ("a", None, False),
            "haproxy": ("b", "haproxy", False),
            "haproxy+header-after": ("c", "haproxy", True),
        }.items():
            traces = [f"{prefix}{i:031x}" for i in range(requests)]
            sent[way] = traces
            if through is None:
                await send(triton.grpc_address, traces)
                continue
            (port,) = free_ports(1)
            config = work / f"{prefix}.cfg"
            config.write_text(haproxy_config(port, triton.grpc_address, after))
            haproxy = subprocess.Popen(["haproxy", "-f", str(config)])
            try:
                await asyncio.sleep(1)
                await send(f"127.0.0.1:{port}", traces)
            finally:
                haproxy.terminate()
                haproxy.wait()
        await asyncio.sleep(7)  # Triton's batch exporter sends every 5 s
    finally:
        await triton.stop(grace_s=5)
        await runner.cleanup()
    return {
        way: sum(collector.spans[t] >= TRITON_SPANS for t in traces)
        for way, traces in sent.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if shutil.which("haproxy") is None:
        raise SystemExit("haproxy is not installed: make setup installs it")
    with tempfile.TemporaryDirectory() as work:
        continued = asyncio.run(measure(args.requests, pathlib.Path(work)))
    lines = [
        "Command: `python -m bench.traceparent`  ",
        f"Machine: {machine_line()}",
        "",
        "| path to Triton | requests | Triton continued the caller's trace |",
        "|---|---|---|",
    ]
    for way, count in continued.items():
        share = 100 * count / args.requests
        lines.append(f"| {way} | {args.requests} | {count} ({share:.0f} %) |")
    lines += [
        "",
        "Triton parses the traceparent value up to the next 0x00 byte after it (its",
        "gRPC carrier returns the metadata value as a C string), so it continues a",
        "trace only when such a byte follows: usually when traceparent is the last",
        "header and the next frame follows in the same buffer, almost never when",
        "another header follows it.",
    ]
    print("\n".join(lines))
    if not args.no_write:
        write_section("traceparent", "Triton and an incoming traceparent", lines)


if __name__ == "__main__":
    main()
