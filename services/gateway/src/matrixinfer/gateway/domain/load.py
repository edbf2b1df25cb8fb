"""Per-model load (in flight, arrivals, held), counted on the request path with
plain integers (no locks: one event loop); the load reporter
(:class:`matrixinfer.gateway.adapters.autoscaler.LoadReporter`) streams it to the
autoscaler about once a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from matrixinfer.api.v1 import autoscaler_pb2 as apb

Key = tuple[str, str]  # (namespace, ModelInfer)


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
