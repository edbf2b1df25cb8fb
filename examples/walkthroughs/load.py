"""Load for the autoscaling walk-through: ``--concurrency`` clients sending the iris
request through the gateway's gRPC port for ``--seconds``; prints what it did."""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np
import tritonclient.grpc.aio as grpcclient


async def main(address: str, concurrency: int, seconds: float) -> None:
    client = grpcclient.InferenceServerClient(address)
    x = grpcclient.InferInput("X", [1, 4], "FP32")
    x.set_data_from_numpy(np.array([[6.7, 3.0, 5.2, 2.3]], dtype=np.float32))
    done = failed = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done, failed
        while time.monotonic() < deadline:
            try:
                await client.infer("iris", [x], client_timeout=30)
                done += 1
            except Exception:  # noqa: BLE001 - counted and reported
                failed += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await client.close()
    print(f"{done} requests answered, {failed} failed, in {seconds:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1:8001")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    asyncio.run(main(args.address, args.concurrency, args.seconds))
