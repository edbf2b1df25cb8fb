"""Autoscaler decision tables: load profiles played tick by tick through `decide`,
single decisions on filled windows, and properties that hold for any input."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.autoscaler.domain.decision import Decision, decide
from matrixinfer.autoscaler.domain.policy import MetricTarget, Policy, ScalingRule
from matrixinfer.autoscaler.domain.window import Sample, WindowState
from matrixinfer.registry.domain.admission import admit

TICK = 2.0

# time -> (metric values, arrivals since the previous tick)
Load = Callable[[float], tuple[dict[str, float], float]]


@dataclass(frozen=True)
class Tick:
    time: float
    current: int
    ready: int
    decision: Decision


def simulate(
    policy: Policy,
    load: Load,
    *,
    replicas: int,
    until: float,
    t0: float = 0.0,
    ready_lag: bool = False,
) -> list[Tick]:
    """Play ``load`` every TICK seconds from ``t0``; the runtime applies each
    decision at once (ready at the next tick with ``ready_lag``)."""
    state = WindowState.empty(t0)
    current = ready = replicas
    ticks = []
    t = t0
    while t < until:
        t += TICK
        values, arrivals = load(t)
        state = state.with_sample(Sample(t, values, arrivals))
        decision, state = decide(policy, state, t, current, ready)
        ticks.append(Tick(t, current, ready, decision))
        ready = current if ready_lag else decision.desired
        current = decision.desired
    return ticks


def conc(value: float) -> tuple[dict[str, float], float]:
    return {"Concurrency": value}, value


def steps(*segments: tuple[float, float]) -> Load:
    """Concurrency ``value`` up to time ``until`` for each (until, value); the last
    value afterwards."""

    def load(t: float) -> tuple[dict[str, float], float]:
        for until, value in segments:
            if t <= until:
                return conc(value)
        return conc(segments[-1][1])

    return load


def alternating(low: float, high: float, half_period: float) -> Load:
    return lambda t: conc(high if (t // half_period) % 2 else low)


def silent(t: float) -> tuple[dict[str, float], float]:
    return {}, 0.0


DEFAULT = Policy()
WIDE = Policy(max_replicas=20)
TO_ZERO = Policy(min_replicas=0)


@dataclass(frozen=True)
class Scenario:
    policy: Policy
    replicas: int
    load: Load
    until: float
    # (from, to, desired): every tick in [from, to] decides exactly ``desired``.
    expect: tuple[tuple[float, float, int], ...]
    t0: float = 0.0


SCENARIOS = [
    pytest.param(
        Scenario(WIDE, 3, alternating(27, 33, TICK), 300, ((2, 300, 3),)),
        id="steady noisy load keeps the count",
    ),
    pytest.param(
        Scenario(
            WIDE,
            2,
            steps((100, 20), (300, 200)),
            300,
            ((2, 100, 2), (102, 102, 8), (104, 104, 14), (106, 300, 20)),
        ),
        id="step up x10 is served within the 6s panic window",
    ),
    pytest.param(
        Scenario(
            WIDE,
            2,
            steps((100, 20), (110, 200), (600, 20)),
            600,
            (
                (2, 100, 2),
                (106, 160, 20),
                (162, 168, 11),
                (170, 220, 10),
                (222, 280, 5),
                (282, 600, 2),
            ),
        ),
        id="spike panics, holds for a stable window, then steps down",
    ),
    pytest.param(
        Scenario(
            WIDE,
            10,
            steps((100, 100), (600, 20)),
            600,
            ((2, 164, 10), (226, 240, 4), (256, 600, 2)),
        ),
        id="ramp down waits for stabilization and is rate limited",
    ),
    pytest.param(
        Scenario(WIDE, 3, alternating(10, 50, 10), 900, ((2, 900, 3),)),
        id="load flapping around its average does not move the count",
    ),
    pytest.param(
        Scenario(
            WIDE,
            3,
            alternating(0, 60, 10),
            900,
            ((2, 12, 3), (14, 72, 6), (74, 900, 4)),
        ),
        id="bursts at twice the average settle instead of panicking every minute",
    ),
    pytest.param(
        Scenario(WIDE, 5, silent, 600, ((2, 600, 5),)),
        id="no metrics at all: held",
    ),
    pytest.param(
        Scenario(
            WIDE,
            8,
            steps((9999, 10)),
            1300,
            ((1002, 1058, 8), (1060, 1118, 4), (1120, 1178, 2), (1180, 1300, 1)),
            t0=1000,
        ),
        id="restart with empty windows: no scale-down for a stable window",
    ),
    pytest.param(
        Scenario(
            Policy(max_replicas=20, scale_up=ScalingRule(100, None, 60, 0)),
            2,
            steps((9999, 200)),
            240,
            ((2, 60, 4), (62, 120, 8), (122, 180, 16), (182, 240, 20)),
        ),
        id="scale-up rate limit doubles at most once per period",
    ),
    pytest.param(
        Scenario(Policy(min_replicas=3), 1, steps((9999, 5)), 120, ((2, 120, 3),)),
        id="below minReplicas: raised at once",
    ),
    pytest.param(
        Scenario(DEFAULT, 2, steps((9999, 1000)), 100, ((6, 100, 10),)),
        id="overload is capped at maxReplicas",
    ),
    pytest.param(
        Scenario(
            TO_ZERO,
            1,
            steps((100, 5), (198, 0), (9999, 5)),
            260,
            ((2, 128, 1), (130, 198, 0), (200, 260, 1)),
        ),
        id="idle goes to zero after the 30s grace, traffic brings one back",
    ),
    pytest.param(
        Scenario(TO_ZERO, 1, steps((9999, 0)), 120, ((2, 58, 1), (60, 120, 0))),
        id="idle since start: zero only after observing a full stable window",
    ),
    pytest.param(
        Scenario(
            Policy(min_replicas=0, scale_to_zero_grace_s=90),
            1,
            steps((9999, 0)),
            150,
            ((2, 88, 1), (90, 150, 0)),
        ),
        id="idle since start with a long grace: zero after observing the grace",
    ),
    pytest.param(
        Scenario(
            TO_ZERO, 0, steps((48, 0), (9999, 5)), 120, ((2, 48, 0), (50, 120, 1))
        ),
        id="at zero: stays there, then one replica on the first traffic",
    ),
    pytest.param(
        Scenario(
            Policy(min_replicas=0, scale_up=ScalingRule(None, 1, 600, 0)),
            0,
            steps((10, 5), (98, 0), (9999, 5)),
            120,
            ((2, 58, 1), (60, 98, 0), (100, 120, 1)),
        ),
        id="zero to one is not blocked by a used-up scale-up limit",
    ),
]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario(scenario: Scenario) -> None:
    ticks = simulate(
        scenario.policy,
        scenario.load,
        replicas=scenario.replicas,
        until=scenario.until,
        t0=scenario.t0,
    )
    by_time = {tick.time: tick for tick in ticks}
    for start, end, desired in scenario.expect:
        got = [
            (t, tick.decision.desired, tick.decision.reason)
            for t, tick in by_time.items()
            if start <= t <= end and tick.decision.desired != desired
        ]
        assert not got, f"expected {desired} in [{start}, {end}], got {got[:3]}"
    for tick in ticks:
        if tick.decision.mode == "panic":
            assert tick.decision.desired >= tick.current, tick


def test_panic_never_scales_down_and_ends_a_stable_window_after_the_burst() -> None:
    ticks = simulate(
        WIDE, steps((100, 20), (110, 200), (600, 20)), replicas=2, until=300
    )
    panic = [tick for tick in ticks if tick.decision.mode == "panic"]
    # The burst is first seen at 102; the threshold (2x ready) is last met there,
    # since by 104 eight replicas are ready for 140 in flight.
    assert (panic[0].time, panic[-1].time) == (102, 160)
    assert [tick.time for tick in panic] == [102 + TICK * i for i in range(30)]
    assert all(tick.decision.desired >= tick.current for tick in panic)
    assert panic[0].decision.reason.startswith("panic: Concurrency 80.0 over 6s")
    after = next(tick for tick in ticks if tick.time == 162)
    assert after.decision.mode == "stable"
    assert after.decision.desired < after.current


def test_panic_lasts_while_replicas_are_not_ready_yet() -> None:
    ticks = simulate(
        WIDE,
        steps((100, 20), (9999, 200)),
        replicas=2,
        until=300,
        ready_lag=True,
    )
    panic = [tick.time for tick in ticks if tick.decision.mode == "panic"]
    # While ready lags behind, 200 in flight stays >= 2x ready a little longer
    # than with instant readiness, so panic ends later than 160.
    assert panic[0] == 102 and panic[-1] > 160
    assert all(
        tick.decision.desired >= tick.current
        for tick in ticks
        if tick.decision.mode == "panic"
    )


def test_ramp_down_removes_at_most_half_per_minute() -> None:
    ticks = simulate(WIDE, steps((100, 100), (600, 20)), replicas=10, until=600)
    counts = [(tick.time, tick.decision.desired) for tick in ticks]
    for t, desired in counts:
        recent = [d for u, d in counts if t - 60 < u <= t]
        peak = max(recent)
        assert desired >= peak - -(-peak // 2), (t, desired, recent)
    # the load dropped at 100: nothing changes for a stable window
    assert all(d == 10 for t, d in counts if t <= 164)
    assert counts[-1][1] == 2


def test_two_metrics_one_missing_never_scales_down() -> None:
    policy = Policy(
        max_replicas=20,
        metrics=(
            MetricTarget("Concurrency", 10),
            MetricTarget("RequestsPerSecond", 50),
        ),
    )
    ticks = simulate(policy, steps((9999, 10)), replicas=5, until=600)
    assert {tick.decision.desired for tick in ticks} == {5}
    last = ticks[-1].decision
    assert dict(last.per_metric) == {"Concurrency": 1, "RequestsPerSecond": None}
    assert last.reason.startswith("held at 5: missing data for RequestsPerSecond")


def test_ratio_metric_idleness_is_judged_by_arrivals() -> None:
    policy = Policy(min_replicas=0, metrics=(MetricTarget("QueueTimeMs", 50),))
    # requests flow without queueing: queue time 0 is not idleness
    busy = simulate(
        policy, lambda t: ({"QueueTimeMs": 0.0}, 5.0), replicas=1, until=300
    )
    assert {tick.decision.desired for tick in busy} == {1}
    idle = simulate(
        policy, lambda t: ({"QueueTimeMs": 0.0}, 0.0), replicas=1, until=300
    )
    assert idle[-1].decision.desired == 0
    assert idle[-1].decision.reason.startswith("idle for")


def test_stale_samples_do_not_scale_down() -> None:
    state = fill(WindowState.empty(0.0), {"Concurrency": 10.0}, 10.0, until=100)
    # the loop stopped delivering samples 10 s ago: the old average says 1
    decision, _ = decide(DEFAULT, state, 110.0, 6, 6)
    assert decision.desired == 6
    assert "no recent samples" in decision.reason


def test_state_is_not_mutated_and_keeps_only_the_windows() -> None:
    state = fill(WindowState.empty(0.0), {"Concurrency": 100.0}, 100.0, until=600)
    decision, after = decide(DEFAULT, state, 600.0, 2, 2)
    assert decision.desired == 10
    assert len(state.samples) == 300 and state.scale_events == ()
    assert {s.time for s in after.samples} == {602 - TICK * i for i in range(1, 31)}
    assert after.scale_events[-1].to_replicas == 10
    # decide told the state its horizon: later samples are trimmed to 60 s
    later = fill(after, {"Concurrency": 100.0}, 100.0, until=700, start=602)
    assert min(s.time for s in later.samples) > 700 - 60


def test_from_spec_uses_the_registry_defaults() -> None:
    admitted = admit(
        {
            "apiVersion": "registry.matrixinfer.ai/v1alpha1",
            "kind": "AutoscalingPolicy",
            "metadata": {"name": "p"},
            "spec": {"targetRef": {"name": "m"}},
        }
    )
    assert isinstance(admitted, pb.AutoscalingPolicy)
    from_registry = Policy.from_spec(admitted.spec)
    assert from_registry == Policy.from_spec(pb.AutoscalingPolicySpec())
    assert from_registry == Policy(
        min_replicas=1,
        max_replicas=10,
        metrics=(MetricTarget("Concurrency", 10.0),),
        tolerance=0.1,
        stable_window_s=60,
        panic_window_s=6,
        panic_threshold=2.0,
        scale_up=ScalingRule(1000, None, 1, 0),
        scale_down=ScalingRule(50, None, 60, 60),
        scale_to_zero_grace_s=30,
    )


def test_from_spec_reads_every_field() -> None:
    spec = pb.AutoscalingPolicySpec(
        min_replicas=0,
        max_replicas=30,
        metrics=[pb.MetricTarget(type="QueueTimeMs", target=25)],
        tolerance_percent=0,
        behavior=pb.ScalingBehavior(
            stable_window_seconds=120,
            panic_window_seconds=12,
            panic_threshold_percent=300,
            scale_up=pb.ScalingRules(max_replicas=4, period_seconds=15),
            scale_down=pb.ScalingRules(
                max_percent=10, period_seconds=30, stabilization_window_seconds=300
            ),
            scale_to_zero_grace_period_seconds=90,
        ),
    )
    assert Policy.from_spec(spec) == Policy(
        min_replicas=0,
        max_replicas=30,
        metrics=(MetricTarget("QueueTimeMs", 25.0),),
        tolerance=0.0,
        stable_window_s=120,
        panic_window_s=12,
        panic_threshold=3.0,
        scale_up=ScalingRule(1000, 4, 15, 0),
        scale_down=ScalingRule(10, None, 30, 300),
        scale_to_zero_grace_s=90,
    )
    with pytest.raises(ValueError, match="unknown metric"):
        Policy.from_spec(
            pb.AutoscalingPolicySpec(metrics=[pb.MetricTarget(type="Cpu", target=1)])
        )


def fill(
    state: WindowState,
    values: Mapping[str, float],
    arrivals: float,
    *,
    until: float,
    start: float = TICK,
) -> WindowState:
    t = start
    while t <= until:
        state = state.with_sample(Sample(t, values, arrivals))
        t += TICK
    return state


TWO = (MetricTarget("Concurrency", 10), MetricTarget("RequestsPerSecond", 100))


@pytest.mark.parametrize(
    ("policy", "values", "arrivals", "current", "ready", "desired", "reason"),
    [
        pytest.param(
            DEFAULT,
            {"Concurrency": 95.0},
            95.0,
            10,
            10,
            10,
            "Concurrency 95.0 over 60s → 10 replicas (target 10 per replica)",
            id="9.5 of 10 replicas: within 10% tolerance",
        ),
        pytest.param(
            DEFAULT,
            {"Concurrency": 85.0},
            85.0,
            10,
            10,
            9,
            "Concurrency 85.0 over 60s → 9 replicas",
            id="8.5 of 10 replicas: outside tolerance, scales down",
        ),
        pytest.param(
            WIDE,
            {"Concurrency": 105.0},
            105.0,
            10,
            10,
            10,
            "within 10% tolerance of 10",
            id="10.5 of 10 replicas: within tolerance, no scale-up",
        ),
        pytest.param(
            Policy(max_replicas=20, tolerance=0.0),
            {"Concurrency": 105.0},
            105.0,
            10,
            10,
            11,
            "→ 11 replicas",
            id="tolerance 0 reacts to 5%",
        ),
        pytest.param(
            Policy(metrics=TWO),
            {"Concurrency": 30.0, "RequestsPerSecond": 500.0},
            500.0,
            4,
            4,
            5,
            "RequestsPerSecond 500.0 over 60s → 5 replicas",
            id="several metrics: requests per second wins",
        ),
        pytest.param(
            Policy(metrics=TWO),
            {"Concurrency": 80.0, "RequestsPerSecond": 500.0},
            500.0,
            6,
            6,
            8,
            "Concurrency 80.0 over 60s → 8 replicas",
            id="several metrics: concurrency wins",
        ),
        pytest.param(
            Policy(metrics=(MetricTarget("QueueTimeMs", 50),)),
            {"QueueTimeMs": 100.0},
            100.0,
            3,
            3,
            6,
            "QueueTimeMs 100.0 over 6s → 6 replicas (target 50 with 3 ready)",
            id="queue time twice the target doubles the ready replicas",
        ),
        pytest.param(
            Policy(metrics=(MetricTarget("GpuUtilization", 60),)),
            {"GpuUtilization": 90.0},
            40.0,
            4,
            4,
            6,
            "GpuUtilization 90.0 over 60s → 6 replicas",
            id="GPU at 90% of a 60% target: x1.5",
        ),
        pytest.param(
            Policy(metrics=(MetricTarget("PendingRequests", 5),)),
            {"PendingRequests": 30.0},
            30.0,
            5,
            5,
            6,
            "PendingRequests 30.0 over 60s → 6 replicas (target 5 per replica)",
            id="pending requests per replica",
        ),
        pytest.param(
            Policy(min_replicas=0, metrics=(MetricTarget("QueueTimeMs", 50),)),
            {"QueueTimeMs": 20.0},
            3.0,
            0,
            0,
            1,
            "traffic at zero → 1 replica",
            id="ratio metric with nothing ready asks for one",
        ),
        pytest.param(
            DEFAULT,
            {},
            0.0,
            5,
            5,
            5,
            "held at 5: missing data for Concurrency",
            id="missing metric: held",
        ),
        pytest.param(
            Policy(metrics=TWO),
            {"Concurrency": 100.0},
            100.0,
            2,
            2,
            10,
            "panic: Concurrency 100.0 over 6s → 10 replicas",
            id="one metric missing: scale up on the other",
        ),
        pytest.param(
            Policy(metrics=TWO),
            {"Concurrency": 10.0},
            10.0,
            5,
            5,
            5,
            "held at 5: missing data for RequestsPerSecond",
            id="one metric missing: no scale-down on the other",
        ),
        pytest.param(
            DEFAULT,
            {"Concurrency": 500.0},
            500.0,
            8,
            8,
            10,
            "clamped to maxReplicas 10",
            id="bounds: capped at maxReplicas",
        ),
        pytest.param(
            Policy(max_replicas=4),
            {"Concurrency": 100.0},
            100.0,
            8,
            8,
            4,
            "clamped to maxReplicas 4",
            id="bounds: a lowered maxReplicas applies at once",
        ),
        pytest.param(
            Policy(min_replicas=3),
            {"Concurrency": 5.0},
            5.0,
            1,
            1,
            3,
            "raised to minReplicas 3",
            id="bounds: raised to minReplicas",
        ),
        pytest.param(
            DEFAULT,
            {"Concurrency": 0.0},
            0.0,
            3,
            3,
            1,
            "Concurrency 0.0 over 60s → 0 replicas",
            id="bounds: no zero without minReplicas 0",
        ),
        pytest.param(
            TO_ZERO,
            {"Concurrency": 0.0},
            0.0,
            0,
            0,
            0,
            "staying at zero",
            id="idle at zero stays at zero",
        ),
        pytest.param(
            TO_ZERO,
            {"Concurrency": 0.0},
            2.0,
            0,
            0,
            1,
            "traffic at zero → 1 replica",
            id="held requests at zero bring one replica",
        ),
    ],
)
def test_single_decision(
    policy: Policy,
    values: dict[str, float],
    arrivals: float,
    current: int,
    ready: int,
    desired: int,
    reason: str,
) -> None:
    state = fill(WindowState.empty(0.0), values, arrivals, until=120)
    decision, _ = decide(policy, state, 120.0, current, ready)
    assert decision.desired == desired, decision
    assert reason in decision.reason, decision.reason
    assert set(decision.per_metric) == {m.type for m in policy.metrics}
    for metric in policy.metrics:
        assert (decision.per_metric[metric.type] is None) == (metric.type not in values)


METRICS = ("Concurrency", "RequestsPerSecond", "PendingRequests", "QueueTimeMs")


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    low = draw(st.integers(0, 3))
    high = draw(st.integers(max(low, 1), 12))
    types = draw(
        st.lists(st.sampled_from(METRICS), min_size=1, max_size=3, unique=True)
    )
    stable = draw(st.sampled_from([10.0, 20.0, 60.0]))
    return Policy(
        min_replicas=low,
        max_replicas=high,
        metrics=tuple(
            MetricTarget(t, draw(st.floats(1, 100, allow_nan=False))) for t in types
        ),
        tolerance=draw(st.sampled_from([0.0, 0.1, 0.3])),
        stable_window_s=stable,
        panic_window_s=draw(st.sampled_from([2.0, 4.0, 6.0])),
        panic_threshold=draw(st.sampled_from([1.1, 2.0])),
        scale_up=ScalingRule(draw(st.sampled_from([None, 100, 1000])), None, 4.0, 0.0),
        scale_down=ScalingRule(
            draw(st.sampled_from([None, 50])),
            draw(st.sampled_from([None, 1])),
            draw(st.sampled_from([2.0, 10.0])),
            draw(st.sampled_from([0.0, 10.0])),
        ),
        scale_to_zero_grace_s=draw(st.sampled_from([0.0, 6.0, 10.0])),
    )


value = st.one_of(st.none(), st.just(0.0), st.floats(0, 500, allow_nan=False))
# Runs of equal ticks, so that quiet stretches (the road to zero) and long gaps in
# a metric are common.
observations = st.lists(
    st.tuples(
        st.one_of(
            st.just({}),
            st.dictionaries(st.sampled_from(METRICS), st.just(0.0)),
            st.dictionaries(st.sampled_from(METRICS), value),
        ),
        st.sampled_from([0.0, 0.0, 1.0, 50.0]),
        st.booleans(),
        st.integers(1, 20),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(policy=policies(), runs=observations, start=st.integers(0, 12))
def test_properties(
    policy: Policy,
    runs: Sequence[tuple[dict[str, float | None], float, bool, int]],
    start: int,
) -> None:
    current = min(max(start, policy.min_replicas), policy.max_replicas)
    ready = current
    state = WindowState.empty(0.0)
    seen: list[tuple[float, set[str]]] = []
    ticks = [(raw, a, lag) for raw, a, lag, repeat in runs for _ in range(repeat)]
    for i, (raw, arrivals, lagging) in enumerate(ticks):
        now = TICK * (i + 1)
        values = {k: v for k, v in raw.items() if v is not None}
        seen.append((now, set(values)))
        state = state.with_sample(Sample(now, values, arrivals))
        decision, state = decide(policy, state, now, current, ready)
        desired = decision.desired
        # within bounds
        assert policy.min_replicas <= desired <= policy.max_replicas
        # panic never scales down
        if decision.mode == "panic":
            assert desired >= current, decision
        # a metric without samples in the stable window never lets it scale down
        in_window = set().union(
            *(names for t, names in seen if now - policy.stable_window_s < t)
        )
        if any(m.type not in in_window for m in policy.metrics):
            assert desired >= current, decision
        # nor do windows that are still filling
        if now < policy.stable_window_s:
            assert desired >= current, decision
        ready = current if lagging else desired
        current = desired
