"""The gateways' ``ReportLoad`` streams: average concurrency (in flight + held) and
arrivals per ModelInfer, summed over every gateway that reported recently. No fresh
gateway at all means the gateway metrics are missing (never zero: a gateway that
went away must not look like a model nobody uses)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from matrixinfer.api.v1 import autoscaler_pb2 as apb
from matrixinfer.autoscaler.domain.metric_types import CONCURRENCY, RPS, Key


@dataclass
class _GatewayState:
    received_at: float
    report: apb.LoadReport


@dataclass
class GatewayLoad:
    """The latest report of every gateway, plus arrivals since the last tick."""

    stale_s: float = 3.0
    clock: Callable[[], float] = time.monotonic
    _gateways: dict[str, _GatewayState] = field(default_factory=dict)
    _arrivals: dict[Key, float] = field(default_factory=dict)

    def _now(self) -> float:
        return self.clock()

    def ingest(self, report: apb.LoadReport) -> None:
        self._gateways[report.gateway_id] = _GatewayState(self._now(), report)
        for model in report.models:
            key = (model.namespace or "default", model.model_infer)
            self._arrivals[key] = self._arrivals.get(key, 0.0) + model.arrivals

    def fresh(self) -> bool:
        """Whether at least one gateway reported within ``stale_s``."""
        now = self._now()
        for gateway_id, state in list(self._gateways.items()):
            if now - state.received_at > 10 * self.stale_s:
                del self._gateways[gateway_id]  # long gone: forget it
        return any(now - s.received_at <= self.stale_s for s in self._gateways.values())

    def retain(self, keys: set[Key]) -> None:
        """Forget arrivals of ModelInfers no policy tracks (bounded memory; a policy
        created later does not start with a stale burst)."""
        for key in [k for k in self._arrivals if k not in keys]:
            del self._arrivals[key]

    def forget(self, gateway_id: str) -> None:
        """A gateway's stream ended: its last report no longer counts."""
        self._gateways.pop(gateway_id, None)

    def take_arrivals(self, key: Key) -> float:
        """Arrivals reported since the previous call for this key."""
        return self._arrivals.pop(key, 0.0)

    def values(self, key: Key) -> dict[str, float]:
        """Concurrency and RequestsPerSecond for one ModelInfer ({} when no gateway
        is fresh: missing data)."""
        if not self.fresh():
            return {}
        now = self._now()
        concurrency = rps = 0.0
        for state in self._gateways.values():
            if now - state.received_at > self.stale_s:
                continue
            window = state.report.window_seconds or 1.0
            for model in state.report.models:
                if (model.namespace or "default", model.model_infer) == key:
                    concurrency += model.in_flight
                    rps += model.arrivals / window
        return {CONCURRENCY: concurrency, RPS: rps}
