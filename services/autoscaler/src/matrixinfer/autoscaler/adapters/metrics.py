"""The autoscaler's own metrics (``matrixinfer_autoscaler_*``) in a
prometheus_client registry: the domain's `Recorder`."""

from __future__ import annotations

import contextlib
import math

from prometheus_client import CollectorRegistry, Counter, Gauge

from matrixinfer.autoscaler.domain.decision import Decision
from matrixinfer.autoscaler.domain.metric_types import Key
from matrixinfer.autoscaler.domain.policy import Policy
from matrixinfer.autoscaler.domain.window import Sample


class AutoscalerMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        labels = ["namespace", "model_infer"]
        self.desired = Gauge(
            "matrixinfer_autoscaler_desired_replicas",
            "Replicas the last decision asked for.",
            labels,
            registry=registry,
        )
        self.actual = Gauge(
            "matrixinfer_autoscaler_ready_replicas",
            "Ready replicas when the last decision was made.",
            labels,
            registry=registry,
        )
        self.max_replicas = Gauge(
            "matrixinfer_autoscaler_max_replicas",
            "The policy's maxReplicas: desired_replicas never goes above it.",
            labels,
            registry=registry,
        )
        self.panic = Gauge(
            "matrixinfer_autoscaler_panic_mode",
            "1 while the policy is in panic mode, else 0.",
            labels,
            registry=registry,
        )
        self.value = Gauge(
            "matrixinfer_autoscaler_metric_value",
            "Last observed value of each policy metric.",
            [*labels, "metric"],
            registry=registry,
        )
        self.recommendation = Gauge(
            "matrixinfer_autoscaler_metric_recommendation",
            "Replicas each metric recommends (NaN while its data is missing).",
            [*labels, "metric"],
            registry=registry,
        )
        self._metric_names: dict[Key, set[str]] = {}
        self.scales = Counter(
            "matrixinfer_autoscaler_scale_events",
            "Scale calls made, by direction.",
            [*labels, "direction"],
            registry=registry,
        )

    def note(self, target: Key, metric: str) -> None:
        self._metric_names.setdefault(target, set()).add(metric)

    def decided(
        self,
        target: Key,
        policy: Policy,
        sample: Sample,
        decision: Decision,
        ready: int,
    ) -> None:
        self.desired.labels(*target).set(decision.desired)
        self.actual.labels(*target).set(ready)
        self.max_replicas.labels(*target).set(policy.max_replicas)
        self.panic.labels(*target).set(1 if decision.mode == "panic" else 0)
        for metric in policy.metrics:
            self.note(target, metric.type)
            value = sample.values.get(metric.type)
            self.value.labels(*target, metric.type).set(
                math.nan if value is None else value
            )
            recommended = decision.per_metric.get(metric.type)
            self.recommendation.labels(*target, metric.type).set(
                math.nan if recommended is None else recommended
            )

    def scaled(self, target: Key, direction: str) -> None:
        self.scales.labels(*target, direction).inc()

    def forget(self, target: Key) -> None:
        """Drop the series of a policy that is gone (no stale gauges)."""
        for gauge in (self.desired, self.actual, self.max_replicas, self.panic):
            with contextlib.suppress(KeyError):
                gauge.remove(*target)
        for metric in self._metric_names.pop(target, set()):
            for gauge in (self.value, self.recommendation):
                with contextlib.suppress(KeyError):
                    gauge.remove(*target, metric)
