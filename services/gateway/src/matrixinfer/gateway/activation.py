"""Scale-from-zero and load reporting: the gateway's side of the autoscaler.

A request for a model with no ready replica is held (bounded per model, until its
deadline) while the autoscaler is asked to activate the model; it continues as soon
as the routing table shows a replica. Per-model load (in flight, arrivals, held) is
counted on the request path with plain integers and streamed to the autoscaler
about once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

import grpc

from matrixinfer.api.v1 import autoscaler_pb2 as apb
from matrixinfer.core.autoscaler import AutoscalerClient
from matrixinfer.core.errors import MatrixInferError

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, ModelInfer)


class Activator(Protocol):
    async def activate(self, namespace: str, model_infer: str) -> None: ...


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


@dataclass
class Load:
    in_flight: int = 0
    arrivals: int = 0
    held: int = 0
    # Sum of in_flight + held over the samples taken since the last report, so the
    # report carries the window's average concurrency, not one instant's.
    concurrency_sum: float = 0.0
    samples: int = 0


@dataclass
class LoadTracker:
    """Counters per ModelInfer, touched on every request (no locks: one event loop)."""

    loads: dict[Key, Load] = field(default_factory=dict)
    #: Requests HAProxy carries itself, in flight per model (read from its
    #: counters before each sample).
    dataplane_in_flight: dict[Key, int] = field(default_factory=dict)
    _dataplane_totals: dict[Key, int] = field(default_factory=dict)

    def observe_dataplane(self, counters: dict[Key, tuple[int, int]]) -> None:
        """Fold HAProxy's (in flight, requests so far) in: arrivals are the growth
        of its total since the last look (a reload restarts the totals at 0)."""
        for key, (_, total) in counters.items():
            before = self._dataplane_totals.get(key)
            if before is not None:
                self.load(key).arrivals += total - before if total >= before else total
            self._dataplane_totals[key] = total
        self.dataplane_in_flight = {key: cur for key, (cur, _) in counters.items()}

    def load(self, key: Key) -> Load:
        load = self.loads.get(key)
        if load is None:
            load = self.loads[key] = Load()
        return load

    def sample(self) -> None:
        """Take one concurrency sample of every model (the reporter calls this
        several times per report)."""
        for key, in_flight in self.dataplane_in_flight.items():
            if in_flight:
                self.load(key)
        for key, load in self.loads.items():
            extra = self.dataplane_in_flight.get(key, 0)
            load.concurrency_sum += load.in_flight + load.held + extra
            load.samples += 1

    def snapshot(self, window_s: float, gateway_id: str) -> apb.LoadReport:
        """The report for the window that ends now; ``in_flight`` is the average
        concurrency (in flight + held) over the window's samples."""
        report = apb.LoadReport(gateway_id=gateway_id, window_seconds=window_s)
        for (namespace, name), load in list(self.loads.items()):
            average = (
                load.concurrency_sum / load.samples
                if load.samples
                else float(load.in_flight + load.held)
            )
            report.models.add(
                namespace=namespace,
                model_infer=name,
                in_flight=average,
                arrivals=load.arrivals,
                held=load.held,
            )
            load.arrivals = 0
            load.concurrency_sum, load.samples = 0.0, 0
            if not (
                load.in_flight
                or load.held
                or self.dataplane_in_flight.get((namespace, name))
            ):
                del self.loads[(namespace, name)]
        return report


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
