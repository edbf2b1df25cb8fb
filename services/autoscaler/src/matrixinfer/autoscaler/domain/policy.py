"""An AutoscalingPolicy as the decision reads it: bounds, metric targets, windows and
per-direction scaling rules, with the registry's admission defaults for unset
fields."""

from __future__ import annotations

import math
from dataclasses import dataclass

from matrixinfer.api.v1.resources_pb2 import AutoscalingPolicySpec, ScalingRules
from matrixinfer.autoscaler.domain.metric_types import CONCURRENCY, METRIC_TYPES

# The registry's admission defaults (registry/domain/admission.py), for specs that
# were not admitted through it.
DEFAULT_MIN_REPLICAS = 1
DEFAULT_MAX_REPLICAS = 10  # or min_replicas, when that is larger
DEFAULT_METRIC = (CONCURRENCY, 10.0)
DEFAULT_TOLERANCE_PERCENT = 10
DEFAULT_STABLE_WINDOW_S = 60
DEFAULT_PANIC_WINDOW_S = 6
DEFAULT_PANIC_THRESHOLD_PERCENT = 200
DEFAULT_SCALE_TO_ZERO_GRACE_S = 30
# max_percent, period_seconds, stabilization_window_seconds
DEFAULT_SCALE_UP = (1000, 1, 0)
DEFAULT_SCALE_DOWN = (50, 60, 60)
# The longest stable window admission allows: WindowState keeps this much until the
# first decide tells it the policy's window.
MAX_WINDOW_S = 3600.0

# Slack for float comparisons and rounding up (9.999999999 replicas is 10).
EPS = 1e-9


@dataclass(frozen=True)
class MetricTarget:
    type: str
    target: float


@dataclass(frozen=True)
class ScalingRule:
    """One direction's limits; None: that limit is not set."""

    max_percent: int | None = None
    max_replicas: int | None = None
    period_s: float = 60.0
    stabilization_window_s: float = 0.0

    @classmethod
    def from_spec(
        cls, rules: ScalingRules, defaults: tuple[int, int, int]
    ) -> ScalingRule:
        percent, period, window = defaults
        return cls(
            max_percent=rules.max_percent if rules.HasField("max_percent") else percent,
            max_replicas=rules.max_replicas if rules.HasField("max_replicas") else None,
            period_s=float(
                rules.period_seconds if rules.HasField("period_seconds") else period
            ),
            stabilization_window_s=float(
                rules.stabilization_window_seconds
                if rules.HasField("stabilization_window_seconds")
                else window
            ),
        )

    def allowance(self, start: int) -> int | None:
        """Replicas this rule lets the count move per period from ``start``."""
        limits = []
        if self.max_percent is not None:
            limits.append(math.ceil(start * self.max_percent / 100 - EPS))
        if self.max_replicas is not None:
            limits.append(self.max_replicas)
        return max(limits) if limits else None


@dataclass(frozen=True)
class Policy:
    min_replicas: int = DEFAULT_MIN_REPLICAS
    max_replicas: int = DEFAULT_MAX_REPLICAS
    metrics: tuple[MetricTarget, ...] = (MetricTarget(*DEFAULT_METRIC),)
    tolerance: float = DEFAULT_TOLERANCE_PERCENT / 100
    stable_window_s: float = float(DEFAULT_STABLE_WINDOW_S)
    panic_window_s: float = float(DEFAULT_PANIC_WINDOW_S)
    panic_threshold: float = DEFAULT_PANIC_THRESHOLD_PERCENT / 100
    scale_up: ScalingRule = ScalingRule(
        DEFAULT_SCALE_UP[0],
        None,
        float(DEFAULT_SCALE_UP[1]),
        float(DEFAULT_SCALE_UP[2]),
    )
    scale_down: ScalingRule = ScalingRule(
        DEFAULT_SCALE_DOWN[0],
        None,
        float(DEFAULT_SCALE_DOWN[1]),
        float(DEFAULT_SCALE_DOWN[2]),
    )
    scale_to_zero_grace_s: float = float(DEFAULT_SCALE_TO_ZERO_GRACE_S)

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or self.max_replicas < max(self.min_replicas, 1):
            raise ValueError(
                f"replica bounds {self.min_replicas}..{self.max_replicas} are invalid"
            )
        if not self.metrics:
            raise ValueError("at least one metric is required")
        for metric in self.metrics:
            if metric.type not in METRIC_TYPES:
                raise ValueError(f"unknown metric type {metric.type!r}")
            if not metric.target > 0:
                raise ValueError(f"{metric.type}: target must be above 0")
        if not 0 < self.panic_window_s <= self.stable_window_s:
            raise ValueError("need 0 < panic window <= stable window")

    @classmethod
    def from_spec(cls, spec: AutoscalingPolicySpec) -> Policy:
        """The policy of a spec; unset fields get the registry's admission defaults.

        Raises ValueError for a spec that admission would have refused.
        """
        low = (
            spec.min_replicas if spec.HasField("min_replicas") else DEFAULT_MIN_REPLICAS
        )
        high = (
            spec.max_replicas
            if spec.HasField("max_replicas")
            else max(DEFAULT_MAX_REPLICAS, low)
        )
        metrics = tuple(MetricTarget(m.type, float(m.target)) for m in spec.metrics)
        tolerance = (
            spec.tolerance_percent
            if spec.HasField("tolerance_percent")
            else DEFAULT_TOLERANCE_PERCENT
        )
        bh = spec.behavior
        return cls(
            min_replicas=low,
            max_replicas=high,
            metrics=metrics or (MetricTarget(*DEFAULT_METRIC),),
            tolerance=tolerance / 100,
            stable_window_s=float(
                bh.stable_window_seconds
                if bh.HasField("stable_window_seconds")
                else DEFAULT_STABLE_WINDOW_S
            ),
            panic_window_s=float(
                bh.panic_window_seconds
                if bh.HasField("panic_window_seconds")
                else DEFAULT_PANIC_WINDOW_S
            ),
            panic_threshold=(
                bh.panic_threshold_percent
                if bh.HasField("panic_threshold_percent")
                else DEFAULT_PANIC_THRESHOLD_PERCENT
            )
            / 100,
            scale_up=ScalingRule.from_spec(bh.scale_up, DEFAULT_SCALE_UP),
            scale_down=ScalingRule.from_spec(bh.scale_down, DEFAULT_SCALE_DOWN),
            scale_to_zero_grace_s=float(
                bh.scale_to_zero_grace_period_seconds
                if bh.HasField("scale_to_zero_grace_period_seconds")
                else DEFAULT_SCALE_TO_ZERO_GRACE_S
            ),
        )

    @property
    def horizon_s(self) -> float:
        """How far back samples matter."""
        return max(self.stable_window_s, self.panic_window_s)

    @property
    def idle_s(self) -> float:
        """No traffic for this long counts as idle."""
        return max(self.scale_to_zero_grace_s, self.panic_window_s)
