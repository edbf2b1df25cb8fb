"""Registry benchmark (not a test): ``python -m bench.registry`` (or ``make bench``).

For each database (SQLite; PostgreSQL when reachable) it starts a real registry
process on an ephemeral port, opens 10 watchers, then applies distinct Model
manifests from concurrent clients and measures:

- applies per second (creates and updates, one object per Apply, and 20-document
  Applies, which run in one transaction);
- watch delivery latency: from the moment a client got its Apply answer to the moment
  each watcher received the event (p50/p99 over every watcher x event), and from the
  moment the Apply was sent.

The client runs in this process, the registry in another, so on a 2-core machine each
has a core. Results are printed and written to BENCHMARKS.md between markers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field

import grpc
import psycopg

from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.api.v1 import registry_pb2_grpc

ROOT = pathlib.Path(__file__).resolve().parents[2]
BEGIN = "<!-- bench.registry:begin -->"
END = "<!-- bench.registry:end -->"
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def manifest(name: str, version: str) -> str:
    return json.dumps(
        {
            "apiVersion": "registry.matrixinfer.ai/v1alpha1",
            "kind": "Model",
            "metadata": {"name": name, "labels": {"bench": "yes"}},
            "spec": {
                "modelSpec": {
                    "modelId": name,
                    "framework": "onnx",
                    "version": version,
                    "source": {"uri": f"s3://models/{name}/{version}/"},
                }
            },
        }
    )


@dataclass
class Run:
    backend: str
    results: dict[str, float] = field(default_factory=dict)


def start_registry(
    url: str, workdir: pathlib.Path
) -> tuple[subprocess.Popen[bytes], str]:
    port_file = workdir / f"port-{uuid.uuid4().hex}"
    env = {
        **os.environ,
        "MATRIXINFER_REGISTRY_DATABASE_URL": url,
        "MATRIXINFER_REGISTRY_GRPC_PORT": "0",
        "MATRIXINFER_REGISTRY_KUBE_PORT": "0",
        "MATRIXINFER_REGISTRY_PORT_FILE": str(port_file),
        "MATRIXINFER_REGISTRY_LOG_LEVEL": "WARNING",
    }
    log = (workdir / "registry.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "matrixinfer.registry"], env=env, stdout=log, stderr=log
    )
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"registry did not start; see {workdir / 'registry.log'}"
            )
        time.sleep(0.05)
    return proc, f"127.0.0.1:{int(port_file.read_text())}"


async def watcher(
    address: str, start_rv: str, received: dict[str, list[float]], expected: int
) -> None:
    async with grpc.aio.insecure_channel(
        address, options=[("grpc.use_local_subchannel_pool", 1)]
    ) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        count = 0
        call = stub.Watch(rpb.WatchRequest(kind="Model", resource_version=start_rv))
        async for event in call:
            if event.type == "BOOKMARK":
                continue
            model = event.object.model
            key = f"{model.metadata.name}@{model.spec.model_spec.version}"
            received.setdefault(key, []).append(time.monotonic())
            count += 1
            if count >= expected:
                call.cancel()
                return


async def apply_load(
    stubs: list[registry_pb2_grpc.RegistryStub],
    docs: list[tuple[str, str]],
    concurrency: int,
    batch: int,
    sent: dict[str, float],
    answered: dict[str, float],
    rate_per_s: float = 0.0,
) -> float:
    """Apply ``docs`` from ``concurrency`` clients; with ``rate_per_s`` each Apply is
    sent at its scheduled time (an open-loop load below saturation)."""
    queue: asyncio.Queue[tuple[int, list[tuple[str, str]]]] = asyncio.Queue()
    for n, i in enumerate(range(0, len(docs), batch)):
        queue.put_nowait((n, docs[i : i + batch]))
    begin = time.monotonic()

    async def worker(stub: registry_pb2_grpc.RegistryStub) -> None:
        while not queue.empty():
            slot, chunk = queue.get_nowait()
            if rate_per_s:
                due = begin + slot / rate_per_s
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            text = "[" + ",".join(manifest(name, v) for name, v in chunk) + "]"
            t0 = time.monotonic()
            for name, v in chunk:
                sent[f"{name}@{v}"] = t0
            await stub.Apply(rpb.ApplyRequest(manifest=text), timeout=60)
            t1 = time.monotonic()
            for name, v in chunk:
                answered[f"{name}@{v}"] = t1

    started = time.monotonic()
    await asyncio.gather(*(worker(stubs[i % len(stubs)]) for i in range(concurrency)))
    return time.monotonic() - started


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(
    addresses: list[str], n: int, concurrency: int, watchers: int, run: Run
) -> None:
    # One connection per registry process (a local subchannel pool each, or gRPC
    # would share one connection between channels to the same target).
    channels = [
        grpc.aio.insecure_channel(a, options=[("grpc.use_local_subchannel_pool", 1)])
        for a in addresses
    ]
    stubs = [registry_pb2_grpc.RegistryStub(c) for c in channels]
    try:
        await _measure(addresses, stubs, n, concurrency, watchers, run)
    finally:
        for channel in channels:
            await channel.close()


async def _measure(
    addresses: list[str],
    stubs: list[registry_pb2_grpc.RegistryStub],
    n: int,
    concurrency: int,
    watchers: int,
    run: Run,
) -> None:
    stub = stubs[0]
    await stub.Apply(rpb.ApplyRequest(manifest=manifest("warmup", "1")), timeout=30)
    phases = [
        ("create", [(f"m{i}", "1") for i in range(n)], 1, 0.0),
        ("update", [(f"m{i}", "2") for i in range(n)], 1, 0.0),
        ("create_batch20", [(f"b{i}", "1") for i in range(n)], 20, 0.0),
        ("update_at_200_per_s", [(f"m{i}", "3") for i in range(n // 2)], 1, 200.0),
    ]
    for phase, docs, batch, rate in phases:
        listed = await stub.List(rpb.ListRequest(kind="Model", limit=1))
        received: dict[str, list[float]] = {}
        tasks = [
            asyncio.create_task(
                watcher(
                    addresses[i % len(addresses)],
                    listed.resource_version,
                    received,
                    len(docs),
                )
            )
            for i in range(watchers)
        ]
        await asyncio.sleep(0.5)  # watchers connected
        sent: dict[str, float] = {}
        answered: dict[str, float] = {}
        elapsed = await apply_load(
            stubs, docs, concurrency, batch, sent, answered, rate
        )
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
        from_answer = [
            max(0.0, t - answered[key]) * 1000
            for key, ts in received.items()
            for t in ts
        ]
        from_send = [(t - sent[key]) * 1000 for key, ts in received.items() for t in ts]
        run.results[f"{phase}_per_s"] = len(docs) / elapsed
        run.results[f"{phase}_watch_p50_ms"] = pct(from_answer, 0.50)
        run.results[f"{phase}_watch_p99_ms"] = pct(from_answer, 0.99)
        run.results[f"{phase}_sent_p50_ms"] = pct(from_send, 0.50)
        run.results[f"{phase}_sent_p99_ms"] = pct(from_send, 0.99)
        deliveries = sum(len(ts) for ts in received.values())
        run.results[f"{phase}_deliveries"] = deliveries
        print(
            f"  {phase:15s} {len(docs) / elapsed:8.0f} objects/s   watch latency "
            f"after answer p50 {pct(from_answer, 0.5):6.1f} ms p99 "
            f"{pct(from_answer, 0.99):6.1f} ms   after send p50 "
            f"{pct(from_send, 0.5):6.1f} ms p99 {pct(from_send, 0.99):6.1f} ms   "
            f"({deliveries} deliveries)",
            flush=True,
        )


def postgres_url() -> str | None:
    url = os.environ.get("MATRIXINFER_TEST_DATABASE_URL", DEFAULT_PG)
    try:
        with psycopg.connect(url.replace("+psycopg", ""), connect_timeout=3):
            return url
    except psycopg.OperationalError:
        return None


def run_backend(backend: str, processes: int, args: argparse.Namespace) -> Run | None:
    run = Run(backend if processes == 1 else f"{backend}, {processes} registries")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(tmp)
        schema = None
        if backend == "sqlite":
            url = f"sqlite+aiosqlite:///{workdir}/registry.db"
        else:
            base = postgres_url()
            if base is None:
                print("PostgreSQL not reachable: skipped", flush=True)
                return None
            schema = f"bench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(base.replace("+psycopg", ""), autocommit=True) as conn:
                conn.execute(f'CREATE SCHEMA "{schema}"')
            url = f"{base}?options=-csearch_path%3D{schema}"
        started = [start_registry(url, workdir) for _ in range(processes)]
        addresses = [address for _, address in started]
        try:
            print(f"{run.backend}: registries at {', '.join(addresses)}", flush=True)
            asyncio.run(
                measure(addresses, args.objects, args.concurrency, args.watchers, run)
            )
        finally:
            for proc, _ in started:
                proc.terminate()
            for proc, _ in started:
                proc.wait(timeout=30)
            if schema is not None and (base := postgres_url()) is not None:
                with psycopg.connect(
                    base.replace("+psycopg", ""), autocommit=True
                ) as conn:
                    conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    return run


def write_markdown(runs: list[Run], args: argparse.Namespace, command: str) -> None:
    lines = [
        BEGIN,
        f"Command: `{command}`  ",
        f"Measured: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
        f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; "
        f"{args.objects} objects per phase, {args.concurrency} concurrent clients, "
        f"{args.watchers} watchers. Registry and client are separate processes; "
        "'2 registries' runs two registry processes on the same PostgreSQL schema "
        "(as two replicas would), with clients and watchers spread over both.",
        "",
        "| database | phase | objects/s | watch p50 ms | watch p99 ms "
        "| p50 ms from send | p99 ms from send |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        for phase in ("create", "update", "create_batch20", "update_at_200_per_s"):
            r = {
                metric: run.results[f"{phase}_{metric}"]
                for metric in ("per_s", "watch_p50_ms", "watch_p99_ms", "sent_p50_ms")
                + ("sent_p99_ms",)
            }
            lines.append(
                f"| {run.backend} | {phase} | {r['per_s']:.0f} | "
                f"{r['watch_p50_ms']:.1f} | {r['watch_p99_ms']:.1f} | "
                f"{r['sent_p50_ms']:.1f} | {r['sent_p99_ms']:.1f} |"
            )
    lines += [
        "",
        "Watch latency is measured from the moment the applying client had its answer "
        "(events often arrive first: those count as 0) and, in the last two columns, "
        "from the moment the Apply was sent (it includes the Apply itself).",
        END,
    ]
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        text = head + "\n".join(lines) + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n## Registry\n\n" + "\n".join(lines) + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--watchers", type=int, default=10)
    parser.add_argument(
        "--backend", choices=["sqlite", "postgresql", "both"], default="both"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="do not touch BENCHMARKS.md"
    )
    args = parser.parse_args()
    plan = [("sqlite", 1), ("postgresql", 1), ("postgresql", 2)]
    if args.backend != "both":
        plan = [(b, n) for b, n in plan if b == args.backend]
    runs = [r for b, n in plan if (r := run_backend(b, n, args)) is not None]
    command = "make bench  # = python -m bench.registry " + " ".join(sys.argv[1:])
    if not args.no_write and runs:
        write_markdown(runs, args, command.strip())
        print("figures written to BENCHMARKS.md")


if __name__ == "__main__":
    main()
