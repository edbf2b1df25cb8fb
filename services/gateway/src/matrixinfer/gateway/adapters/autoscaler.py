"""Scale-from-zero and load reporting: the gateway's side of the autoscaler.

A request for a model with no ready replica is held (bounded per model, until its
deadline) while the autoscaler is asked to activate the model; it continues as soon
as the routing table shows a replica. Per-model load (in flight, arrivals, held) is
counted on the request path with plain integers
(:class:`matrixinfer.gateway.domain.load.LoadTracker`) and streamed to the
autoscaler about once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable

import grpc

from matrixinfer.api.v1 import autoscaler_pb2 as apb
from matrixinfer.core.autoscaler import AutoscalerClient
from matrixinfer.core.errors import MatrixInferError
from matrixinfer.gateway.domain.load import Key, LoadTracker

log = logging.getLogger(__name__)


class NoopActivator:
    """Used until an autoscaler is configured: held requests wait for whoever scales
    the ModelInfer up (an operator, `Controller.Scale`)."""

    async def activate(self, namespace: str, model_infer: str) -> None:
        return None


class AutoscalerActivator:
    def __init__(self, channel: grpc.aio.Channel, timeout_s: float = 2.0) -> None:
        self._client = AutoscalerClient(channel, timeout_s)

    async def activate(self, namespace: str, model_infer: str) -> None:
        try:
            await self._client.activate(namespace, model_infer)
        except MatrixInferError as e:
            # Held requests still wait for replicas; the next request asks again.
            log.warning("Activate %s/%s failed: %s", namespace, model_infer, e)


class LoadReporter:
    """Streams LoadReport to the autoscaler every ``interval_s``; reconnects."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        tracker: LoadTracker,
        dataplane: Callable[[], dict[Key, tuple[int, int]]] | None = None,
        interval_s: float = 1.0,
    ) -> None:
        self._client = AutoscalerClient(channel)
        self._tracker = tracker
        self._dataplane = dataplane
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self.gateway_id = f"gateway-{uuid.uuid4().hex[:8]}"

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="load-reporter")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _reports(self) -> AsyncIterator[apb.LoadReport]:
        samples = 10
        while True:
            for _ in range(samples):
                await asyncio.sleep(self._interval_s / samples)
                if self._dataplane is not None:
                    self._tracker.observe_dataplane(self._dataplane())
                self._tracker.sample()
            yield self._tracker.snapshot(self._interval_s, self.gateway_id)

    async def _run(self) -> None:
        while True:
            try:
                await self._client.report_load(self._reports())
            except MatrixInferError as e:
                log.warning("load reports interrupted (%s); retrying", e)
            await asyncio.sleep(self._interval_s)
