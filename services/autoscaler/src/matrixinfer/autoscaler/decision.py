"""The autoscaler's decision: how many replicas a ModelInfer should have now.

`decide` is a pure function of the policy, an immutable `WindowState`, the time and
the replica counts: no clock, no I/O, no randomness. The service loop gathers one
`Sample` per tick (platform-wide totals for the target ModelInfer), folds it into the
state with `WindowState.with_sample`, calls `decide`, acts on `Decision.desired` and
keeps the returned state for the next tick.

How a decision is made (Knative KPA windows and panic, Kubernetes HPA tolerance,
stabilization and rate limits):

* Recommendations. Each metric is averaged over the stable window (default 60 s) and
  over the panic window (default 6 s), giving one recommendation per window.
  Concurrency, RequestsPerSecond and PendingRequests are totals and their target is
  per replica: ``ceil(average / target)``. QueueTimeMs and GpuUtilization are already
  per request or per replica, so they scale the ready replicas that produced them:
  ``ceil(ready * average / target)``, and at least 1 while the average is above 0.
  With several metrics the largest recommendation wins.
* Tolerance. When the stable recommendation, before rounding up, is within the
  tolerance of the current count (``|raw / current - 1| <= tolerance``), the current
  count is kept; this uses the unrounded value as HPA's usage ratio does.
* Stabilization (HPA). Every stable recommendation is remembered. A scale-down goes
  no lower than the highest recommendation of the last scale-down stabilization
  window, a scale-up no higher than the lowest of the last scale-up window (0 s by
  default, i.e. no delay).
* Panic (KPA). Panic starts when the panic-window recommendation is above the
  current count and at least the panic threshold (default 200 %) of the ready
  replicas (at least 1). In panic the count is the larger of the panic
  recommendation and the current count: it never goes down. Every tick that still
  meets the threshold extends panic; it ends one full stable window after the
  threshold was last met.
* Missing data never causes a scale-down. A metric without any sample in the stable
  window, a state whose newest sample is older than the panic window (the loop has
  stopped reporting), or a state that has observed for less than one stable window
  (a restart: the windows are still filling) can only keep or raise the count;
  scaling up on the metrics that are present is allowed.
* Bursts. Out of panic, a scale-down stops at the smallest count at which the
  highest panic-window recommendation of the last stable window would stay under the
  panic threshold. Without this, load that bursts to twice its average flaps: panic
  scales up, panic ends, the stable average scales down, the next burst panics again.
* Rate limits (per direction, like HPA's policies with ``selectPolicy: Max``). In
  any sliding ``period_s`` the count may move by at most
  ``max(ceil(base * max_percent / 100), max_replicas)`` replicas, counting only the
  fields that are set (neither set: unlimited). ``base`` is taken from the scale
  events this function records: for scale-down the highest count seen in the period
  (its start, every event, the current count), for scale-up the lowest (0 counts as
  1, so 0 -> 1 is never blocked). HPA measures against the count at the start of the
  period only; after a fast scale-up 2 -> 20 that start is 2, and HPA would allow
  20 -> 1 at once. Measured against the peak, 50 % per period means 20 -> 10.
* Bounds. The result is clamped to ``[max(min_replicas, 1), max_replicas]``; bounds
  win over everything else (a lowered maxReplicas applies at once, even in panic).
  0 is only reached through the scale-to-zero rule.
* Scale to zero, only with ``min_replicas == 0``. Traffic means a sample with
  arrivals > 0 or any metric value > 0; ``arrivals`` judges idleness for ratio
  metrics (a queue time of 0 does not mean no requests). A running ModelInfer goes
  to 0 at once (no stabilization, no rate limit: the grace period is the
  stabilization) when there has been no traffic for the idle period
  ``max(scale_to_zero_grace_s, panic_window_s)`` *and* the autoscaler has observed
  for at least ``max(stable_window_s, scale_to_zero_grace_s)`` *and* no data is
  missing *and* it is not in panic. The observation requirement is our choice: after
  a restart the state knows nothing about traffic before it, so it must have seen a
  full stable window (and a full grace period) itself. At 0 it stays at 0 until
  traffic is seen.
* Zero to one. At 0 with traffic within the idle period the count is at least 1 at
  once: no window to wait for, no rate limit in the way.

The loop should report a ratio metric as 0 when there were no requests (no queue
time, an idle GPU); leaving it out is missing data and blocks scale-down and scale
to zero.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Literal

from matrixinfer.api.v1.resources_pb2 import AutoscalingPolicySpec, ScalingRules

# Totals whose target is per replica: ceil(average / target).
PER_REPLICA_METRICS = frozenset({"Concurrency", "RequestsPerSecond", "PendingRequests"})
# Averages over requests or replicas: ceil(ready * average / target).
RATIO_METRICS = frozenset({"QueueTimeMs", "GpuUtilization"})
METRIC_TYPES = PER_REPLICA_METRICS | RATIO_METRICS

# The registry's admission defaults (registry/domain/admission.py), for specs that
# were not admitted through it.
DEFAULT_MIN_REPLICAS = 1
DEFAULT_MAX_REPLICAS = 10  # or min_replicas, when that is larger
DEFAULT_METRIC = ("Concurrency", 10.0)
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

_EPS = 1e-9

Mode = Literal["stable", "panic"]


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
            limits.append(math.ceil(start * self.max_percent / 100 - _EPS))
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
class Decision:
    desired: int
    mode: Mode
    reason: str
    # Each metric's recommendation over the window of ``mode``; None: no data.
    per_metric: Mapping[str, int | None] = field(
        default_factory=lambda: MappingProxyType({})
    )
    # Largest recommendation over the stable / panic window; None: no data.
    stable_desired: int | None = None
    panic_desired: int | None = None


@dataclass(frozen=True)
class _Window:
    seconds: float
    averages: Mapping[str, float | None]
    raw: Mapping[str, float | None]
    per_metric: Mapping[str, int | None]

    @property
    def winner(self) -> str | None:
        present = [(r, m) for m, r in self.per_metric.items() if r is not None]
        return max(present, key=lambda p: p[0])[1] if present else None

    @property
    def recommendation(self) -> int | None:
        winner = self.winner
        return None if winner is None else self.per_metric[winner]


def _ceil(x: float) -> int:
    return max(0, math.ceil(x - _EPS))


def _window(
    policy: Policy, samples: Iterable[Sample], seconds: float, now: float, ready: int
) -> _Window:
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
            rec = max(_ceil(amount), 1 if avg > 0 else 0)
        else:
            amount = avg / metric.target
            rec = _ceil(amount)
        averages[metric.type], raw[metric.type], per_metric[metric.type] = (
            avg,
            amount,
            rec,
        )
    return _Window(seconds, averages, raw, MappingProxyType(per_metric))


def _describe(policy: Policy, window: _Window, ready: int) -> str:
    winner = window.winner
    if winner is None:
        return f"no data over {window.seconds:g}s"
    target = next(m.target for m in policy.metrics if m.type == winner)
    per = "per replica" if winner in PER_REPLICA_METRICS else f"with {ready} ready"
    text = (
        f"{winner} {window.averages[winner]:.1f} over {window.seconds:g}s → "
        f"{_replicas(window.per_metric[winner] or 0)} (target {target:g} {per})"
    )
    if len(policy.metrics) > 1:
        text += f", largest of {len(policy.metrics)} metrics"
    return text


def _stabilize(
    policy: Policy,
    recommendations: tuple[Recommendation, ...],
    now: float,
    current: int,
    recommended: int,
    notes: list[str],
) -> int:
    """HPA stabilization: no lower than the highest recommendation of the
    scale-down window, no higher than the lowest of the scale-up window."""

    def recent(window_s: float) -> list[int]:
        return [
            r.replicas for r in recommendations if now - window_s < r.time <= now
        ] or [recommended]

    down_floor = max(recent(policy.scale_down.stabilization_window_s))
    up_ceiling = min(recent(policy.scale_up.stabilization_window_s))
    desired = min(max(current, up_ceiling), down_floor)
    if desired > recommended:
        notes.append(
            f"stabilized at {desired} (highest recommendation in the last "
            f"{policy.scale_down.stabilization_window_s:g}s)"
        )
    elif desired < recommended:
        notes.append(
            f"stabilized at {desired} (lowest recommendation in the last "
            f"{policy.scale_up.stabilization_window_s:g}s)"
        )
    return desired


def _counts_in_period(
    events: tuple[ScaleEvent, ...], now: float, period: float, current: int
) -> list[int]:
    """Every replica count the ModelInfer had in the last ``period`` seconds."""
    counts = [current]
    for e in events:
        if now - period < e.time <= now:
            counts += (e.from_replicas, e.to_replicas)
    return counts


def _replicas(n: int) -> str:
    return f"{n} replica" if n == 1 else f"{n} replicas"


def decide(
    policy: Policy,
    state: WindowState,
    now: float,
    current_replicas: int,
    ready_replicas: int,
) -> tuple[Decision, WindowState]:
    """The replica count for ``now`` and the state to keep for the next tick."""
    current = max(0, current_replicas)
    ready = max(0, ready_replicas)
    samples = tuple(s for s in state.samples if now - policy.horizon_s < s.time)
    stable = _window(policy, samples, policy.stable_window_s, now, ready)
    panic = _window(policy, samples, policy.panic_window_s, now, ready)
    stable_rec, panic_rec = stable.recommendation, panic.recommendation

    # Why a scale-down would not be trusted now.
    missing = [m for m, r in stable.per_metric.items() if r is None]
    observed = now - state.observing_since
    newest = max((s.time for s in samples if s.time <= now), default=None)
    if missing:
        distrust: str | None = f"missing data for {', '.join(missing)}"
    elif newest is None or now - newest >= policy.panic_window_s:
        distrust = "no recent samples"
    elif observed < policy.stable_window_s:
        distrust = (
            f"windows refilling after restart "
            f"(observed {observed:g}s of {policy.stable_window_s:g}s)"
        )
    else:
        distrust = None

    # Panic bookkeeping (KPA).
    over = panic_rec is not None and panic_rec / max(ready, 1) >= policy.panic_threshold
    panic_since, panic_until = state.panic_since, state.panic_until
    if panic_since is None:
        if over and panic_rec is not None and panic_rec > current:
            panic_since, panic_until = now, now + policy.stable_window_s
    elif over:
        panic_until = now + policy.stable_window_s
    elif panic_until is None or now >= panic_until:
        panic_since = panic_until = None

    # The stable recommendation after tolerance; remembered for stabilization.
    recommendations = state.recommendations
    tolerated: int | None = None
    tolerance_note = ""
    if stable_rec is not None:
        tolerated = stable_rec
        winner = stable.winner
        raw = stable.raw[winner] if winner is not None else None
        if (
            current > 0
            and raw is not None
            and stable_rec != current
            and abs(raw / current - 1) <= policy.tolerance + _EPS
        ):
            tolerated = current
            tolerance_note = (
                f"; within {policy.tolerance:.0%} tolerance of {current} → keep"
            )
        recommendations = (*recommendations, Recommendation(now, tolerated))
    bursts = tuple(
        b for b in state.bursts if now - policy.stable_window_s < b.time <= now
    )
    if panic_rec is not None:
        bursts = (*bursts, Recommendation(now, panic_rec))
    keep_recs = max(
        policy.scale_up.stabilization_window_s, policy.scale_down.stabilization_window_s
    )
    recommendations = tuple(r for r in recommendations if now - keep_recs < r.time)

    notes: list[str] = []
    mode: Mode
    if panic_since is not None:
        mode = "panic"
        per_metric = panic.per_metric
        desired = max(panic_rec if panic_rec is not None else current, current)
        head = (
            f"panic: {_describe(policy, panic, ready)}; no scale-down until "
            f"{policy.stable_window_s:g}s after load last reached "
            f"{policy.panic_threshold:.0%} of ready replicas"
        )
    elif tolerated is None:
        mode = "stable"
        per_metric = stable.per_metric
        desired = current
        head = f"held at {current}: {distrust}" if current else f"{distrust}"
    else:
        mode = "stable"
        per_metric = stable.per_metric
        head = _describe(policy, stable, ready) + tolerance_note
        desired = _stabilize(policy, recommendations, now, current, tolerated, notes)
        if desired < current and bursts:
            peak = max(b.replicas for b in bursts)
            calm = min(current, math.floor(peak / policy.panic_threshold + _EPS) + 1)
            if desired < calm:
                desired = calm
                notes.append(
                    f"kept at {calm} so that bursts of the last "
                    f"{policy.stable_window_s:g}s (→ {_replicas(peak)}) stay under "
                    f"the panic threshold"
                )
        if desired < current and distrust is not None:
            head = f"held at {current}: {distrust}; {head}"
            desired = current
            notes.clear()
        elif missing:
            notes.append(f"missing data for {', '.join(missing)}: no scale-down")

    # Rate limits over sliding periods.
    if desired > current:
        low = min(
            _counts_in_period(
                state.scale_events, now, policy.scale_up.period_s, current
            )
        )
        allowance = policy.scale_up.allowance(max(low, 1))
        if allowance is not None and desired > low + allowance:
            desired = max(current, low + allowance)
            notes.append(
                f"scale-up limited to {desired} "
                f"({_rule_text(policy.scale_up)} per {policy.scale_up.period_s:g}s)"
            )
    elif desired < current:
        high = max(
            _counts_in_period(
                state.scale_events, now, policy.scale_down.period_s, current
            )
        )
        allowance = policy.scale_down.allowance(high)
        if allowance is not None and desired < high - allowance:
            desired = min(current, high - allowance)
            notes.append(
                f"scale-down limited to {desired} "
                f"({_rule_text(policy.scale_down)} per {policy.scale_down.period_s:g}s)"
            )

    # Bounds; 0 only through the scale-to-zero rule below.
    floor = max(policy.min_replicas, 1)
    if desired < floor:
        desired = floor
        if policy.min_replicas > 0:
            notes.append(f"raised to minReplicas {floor}")
    if desired > policy.max_replicas:
        desired = policy.max_replicas
        notes.append(f"clamped to maxReplicas {policy.max_replicas}")

    # Scale to zero and staying there.
    last_traffic = state.last_traffic_at
    quiet_for = now - (
        last_traffic if last_traffic is not None else state.observing_since
    )
    traffic_recent = last_traffic is not None and now - last_traffic < policy.idle_s
    reason = head + "".join(f"; {n}" for n in notes)
    if current == 0 and desired > 0 and policy.min_replicas == 0:
        reason = f"traffic at zero → {_replicas(desired)}: {reason}"
    if policy.min_replicas == 0 and not traffic_recent:
        if current == 0:
            desired, reason = 0, f"idle for {quiet_for:g}s: staying at zero"
            panic_since = panic_until = None
            mode = "stable"
        elif (
            mode == "stable"
            and distrust is None
            and observed >= max(policy.stable_window_s, policy.scale_to_zero_grace_s)
        ):
            desired, reason = 0, f"idle for {quiet_for:g}s → scale to zero"

    events = state.scale_events
    if desired != current:
        events = (*events, ScaleEvent(now, current, desired))
    keep_events = max(policy.scale_up.period_s, policy.scale_down.period_s)
    events = tuple(e for e in events if now - keep_events < e.time)

    decision = Decision(
        desired=desired,
        mode=mode,
        reason=reason,
        per_metric=per_metric,
        stable_desired=stable_rec,
        panic_desired=panic_rec,
    )
    new_state = replace(
        state,
        samples=samples,
        panic_since=panic_since,
        panic_until=panic_until,
        recommendations=recommendations,
        bursts=bursts,
        scale_events=events,
        horizon_s=policy.horizon_s,
    )
    return decision, new_state


def _rule_text(rule: ScalingRule) -> str:
    parts = []
    if rule.max_percent is not None:
        parts.append(f"{rule.max_percent}%")
    if rule.max_replicas is not None:
        parts.append(f"{rule.max_replicas} replicas")
    return " or ".join(parts)
