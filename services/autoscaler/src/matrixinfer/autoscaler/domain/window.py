"""What the decision remembers and measures: samples, the window state kept between
ticks, and the averages of one window."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from matrixinfer.autoscaler.domain.metric_types import RATIO_METRICS
from matrixinfer.autoscaler.domain.policy import EPS, MAX_WINDOW_S, Policy


@dataclass(frozen=True)
class Sample:
    """One observation at ``time`` (seconds).

    ``values``: metric type -> platform-wide value; a metric left out is missing
    data. ``arrivals``: requests that arrived since the previous sample, held ones
    included.
    """

    time: float
    values: Mapping[str, float]
    arrivals: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", MappingProxyType(dict(self.values)))

    @property
    def has_traffic(self) -> bool:
        return self.arrivals > 0 or any(v > 0 for v in self.values.values())


@dataclass(frozen=True)
class Recommendation:
    time: float
    replicas: int


@dataclass(frozen=True)
class ScaleEvent:
    time: float
    from_replicas: int
    to_replicas: int


@dataclass(frozen=True)
class WindowState:
    """Everything `decide` remembers between ticks; never mutated."""

    observing_since: float
    # Sorted by time; only those within ``horizon_s`` of the newest.
    samples: tuple[Sample, ...] = ()
    panic_since: float | None = None
    # Panic ends at this time unless the threshold is met again.
    panic_until: float | None = None
    recommendations: tuple[Recommendation, ...] = ()
    # Panic-window recommendations of the last stable window (burst heights).
    bursts: tuple[Recommendation, ...] = ()
    scale_events: tuple[ScaleEvent, ...] = ()
    last_traffic_at: float | None = None
    horizon_s: float = MAX_WINDOW_S

    @classmethod
    def empty(cls, now: float, horizon_s: float = MAX_WINDOW_S) -> WindowState:
        return cls(observing_since=now, horizon_s=horizon_s)

    @property
    def in_panic(self) -> bool:
        return self.panic_since is not None

    def with_sample(self, sample: Sample) -> WindowState:
        """This state with ``sample`` added and samples older than the horizon
        dropped."""
        samples = list(self.samples)
        bisect.insort_right(samples, sample, key=lambda s: s.time)
        cutoff = samples[-1].time - self.horizon_s
        first = bisect.bisect_right(samples, cutoff, key=lambda s: s.time)
        last_traffic = self.last_traffic_at
        if sample.has_traffic and (last_traffic is None or sample.time > last_traffic):
            last_traffic = sample.time
        return replace(
            self, samples=tuple(samples[first:]), last_traffic_at=last_traffic
        )


@dataclass(frozen=True)
class Window:
    """Each metric of a policy averaged over the last ``seconds``; None: the metric
    has no sample in the window (missing data)."""

    seconds: float
    averages: Mapping[str, float | None]
    # The replicas each metric asks for, before rounding up.
    raw: Mapping[str, float | None]
    per_metric: Mapping[str, int | None]

    @property
    def winner(self) -> str | None:
        """The metric with the largest recommendation (the first on a tie)."""
        present = [(r, m) for m, r in self.per_metric.items() if r is not None]
        return max(present, key=lambda p: p[0])[1] if present else None

    @property
    def recommendation(self) -> int | None:
        winner = self.winner
        return None if winner is None else self.per_metric[winner]

    @property
    def missing(self) -> list[str]:
        """The metrics without data, in the policy's order."""
        return [m for m, r in self.per_metric.items() if r is None]


def ceil_replicas(x: float) -> int:
    return max(0, math.ceil(x - EPS))


def measure(
    policy: Policy, samples: Iterable[Sample], seconds: float, now: float, ready: int
) -> Window:
    """Average every metric over ``(now - seconds, now]`` and turn it into replicas:
    per-replica metrics are ``average / target``, ratio metrics scale the ``ready``
    replicas that produced them (at least 1 while the average is above 0)."""
    inside = [s for s in samples if now - seconds < s.time <= now]
    averages: dict[str, float | None] = {}
    raw: dict[str, float | None] = {}
    per_metric: dict[str, int | None] = {}
    for metric in policy.metrics:
        values = [s.values[metric.type] for s in inside if metric.type in s.values]
        if not values:
            averages[metric.type] = raw[metric.type] = per_metric[metric.type] = None
            continue
        avg = max(0.0, sum(values) / len(values))
        if metric.type in RATIO_METRICS:
            amount = ready * avg / metric.target
            rec = max(ceil_replicas(amount), 1 if avg > 0 else 0)
        else:
            amount = avg / metric.target
            rec = ceil_replicas(amount)
        averages[metric.type], raw[metric.type], per_metric[metric.type] = (
            avg,
            amount,
            rec,
        )
    return Window(seconds, averages, raw, MappingProxyType(per_metric))
