"""The stages of a decision, one table each: every stage is a pure function, so each
row is its arguments and what it returns. test_decision.py plays them together."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from matrixinfer.autoscaler.domain import stages
from matrixinfer.autoscaler.domain.policy import MetricTarget, Policy, ScalingRule
from matrixinfer.autoscaler.domain.stages import Mode, Proposal
from matrixinfer.autoscaler.domain.window import (
    Recommendation,
    Sample,
    ScaleEvent,
    Window,
    measure,
)

# min 1, max 10, tolerance 10 %, stable 60 s, panic 6 s, panic threshold 200 %,
# scale-up 1000 % per 1 s, scale-down 50 % per 60 s with a 60 s window, grace 30 s.
DEFAULT = Policy()
TO_ZERO = Policy(min_replicas=0)
NOW = 100.0


def recs(*pairs: tuple[float, int]) -> tuple[Recommendation, ...]:
    return tuple(Recommendation(t, n) for t, n in pairs)


# ---------------------------------------------------------------- recommendations


@pytest.mark.parametrize(
    ("metric", "points", "ready", "average", "replicas"),
    [
        pytest.param(
            MetricTarget("Concurrency", 10), [(99, 25.0)], 1, 25.0, 3, id="per replica"
        ),
        pytest.param(
            MetricTarget("Concurrency", 10),
            [(50, 10.0), (95, 30.0)],
            1,
            20.0,
            2,
            id="averaged over the window",
        ),
        pytest.param(
            MetricTarget("Concurrency", 10),
            [(30, 500.0), (95, 30.0)],
            1,
            30.0,
            3,
            id="older samples are outside the window",
        ),
        pytest.param(
            MetricTarget("Concurrency", 10),
            [(99, 10.0000000001)],
            1,
            10.0000000001,
            1,
            id="float noise does not round up",
        ),
        pytest.param(
            MetricTarget("Concurrency", 10), [(99, -5.0)], 1, 0.0, 0, id="never < 0"
        ),
        pytest.param(
            MetricTarget("QueueTimeMs", 50),
            [(99, 100.0)],
            3,
            100.0,
            6,
            id="ratio scales the ready replicas",
        ),
        pytest.param(
            MetricTarget("QueueTimeMs", 50),
            [(99, 1.0)],
            3,
            1.0,
            1,
            id="ratio above 0 asks for at least 1",
        ),
        pytest.param(
            MetricTarget("GpuUtilization", 50),
            [(99, 80.0)],
            0,
            80.0,
            1,
            id="ratio with none ready asks for 1",
        ),
        pytest.param(
            MetricTarget("QueueTimeMs", 50), [(99, 0.0)], 3, 0.0, 0, id="ratio at 0"
        ),
        pytest.param(
            MetricTarget("Concurrency", 10), [], 1, None, None, id="missing data"
        ),
    ],
)
def test_measure(
    metric: MetricTarget,
    points: list[tuple[float, float]],
    ready: int,
    average: float | None,
    replicas: int | None,
) -> None:
    policy = Policy(metrics=(metric,))
    samples = [Sample(t, {metric.type: v}, 0.0) for t, v in points]
    window = measure(policy, samples, 60.0, NOW, ready)
    assert window.averages[metric.type] == average
    assert window.per_metric[metric.type] == replicas
    assert window.recommendation == replicas
    assert window.missing == ([] if replicas is not None else [metric.type])


def test_the_largest_recommendation_wins() -> None:
    policy = Policy(
        metrics=(MetricTarget("Concurrency", 10), MetricTarget("RequestsPerSecond", 5))
    )
    window = measure(
        policy,
        [Sample(99, {"Concurrency": 30.0, "RequestsPerSecond": 40.0}, 0.0)],
        60.0,
        NOW,
        1,
    )
    assert window.winner == "RequestsPerSecond"
    assert window.recommendation == 8


# ---------------------------------------------------------------- distrust


@pytest.mark.parametrize(
    ("missing", "newest", "observed", "expected"),
    [
        pytest.param([], 98.0, 60.0, None, id="trusted"),
        pytest.param(
            ["Concurrency"],
            98.0,
            600.0,
            "missing data for Concurrency",
            id="a metric without data",
        ),
        pytest.param(
            ["Concurrency", "QueueTimeMs"],
            None,
            0.0,
            "missing data for Concurrency, QueueTimeMs",
            id="missing data is named first",
        ),
        pytest.param([], None, 600.0, "no recent samples", id="no samples"),
        pytest.param(
            [], 94.0, 600.0, "no recent samples", id="newest a panic window old"
        ),
        pytest.param(
            [],
            95.0,
            30.0,
            "windows refilling after restart (observed 30s of 60s)",
            id="less than a stable window observed",
        ),
    ],
)
def test_distrust(
    missing: list[str], newest: float | None, observed: float, expected: str | None
) -> None:
    assert stages.distrust(DEFAULT, missing, newest, NOW, observed) == expected


# ---------------------------------------------------------------- panic


@pytest.mark.parametrize(
    ("since", "until", "recommended", "ready", "current", "expected"),
    [
        pytest.param(None, None, 3, 2, 2, (None, None), id="calm"),
        pytest.param(None, None, None, 2, 2, (None, None), id="no data"),
        pytest.param(None, None, 4, 2, 2, (NOW, NOW + 60), id="starts at 200%"),
        pytest.param(
            None, None, 4, 2, 4, (None, None), id="not above current: no start"
        ),
        pytest.param(None, None, 2, 0, 1, (NOW, NOW + 60), id="none ready counts 1"),
        pytest.param(50.0, 110.0, 8, 2, 2, (50.0, NOW + 60), id="over again: extends"),
        pytest.param(
            50.0, 110.0, 8, 4, 8, (50.0, NOW + 60), id="extends at current too"
        ),
        pytest.param(50.0, 110.0, 3, 4, 4, (50.0, 110.0), id="under: lasts"),
        pytest.param(50.0, NOW, 3, 4, 4, (None, None), id="under at its end: ends"),
    ],
)
def test_panic_mode(
    since: float | None,
    until: float | None,
    recommended: int | None,
    ready: int,
    current: int,
    expected: tuple[float | None, float | None],
) -> None:
    got = stages.panic_mode(DEFAULT, since, until, recommended, ready, current, NOW)
    assert got == expected


def test_panic_proposal_never_goes_down() -> None:
    def window(replicas: int | None) -> Window:
        return Window(
            6.0,
            {"Concurrency": None if replicas is None else 10.0 * replicas},
            {"Concurrency": replicas},
            MappingProxyType({"Concurrency": replicas}),
        )

    up = stages.panic_proposal(DEFAULT, window(8), 2, 5)
    assert up == Proposal(
        8,
        "panic: Concurrency 80.0 over 6s → 8 replicas (target 10 per replica); "
        "no scale-down until 60s after load last reached 200% of ready replicas",
    )
    assert stages.panic_proposal(DEFAULT, window(3), 2, 5).desired == 5
    assert stages.panic_proposal(DEFAULT, window(None), 2, 5).desired == 5


# ---------------------------------------------------------------- tolerance


@pytest.mark.parametrize(
    ("policy", "recommended", "raw", "current", "expected"),
    [
        pytest.param(DEFAULT, None, None, 5, (None, ""), id="no recommendation"),
        pytest.param(DEFAULT, 10, 9.5, 10, (10, ""), id="already the current count"),
        pytest.param(
            DEFAULT,
            11,
            10.5,
            10,
            (10, "; within 10% tolerance of 10 → keep"),
            id="5% up: kept",
        ),
        pytest.param(
            DEFAULT,
            9,
            9.0,
            10,
            (10, "; within 10% tolerance of 10 → keep"),
            id="10% down: kept (inclusive)",
        ),
        pytest.param(DEFAULT, 9, 8.5, 10, (9, ""), id="15% down: follows"),
        pytest.param(DEFAULT, 3, 2.5, 0, (3, ""), id="at zero: follows"),
        pytest.param(Policy(tolerance=0.0), 11, 10.05, 10, (11, ""), id="no tolerance"),
    ],
)
def test_tolerate(
    policy: Policy,
    recommended: int | None,
    raw: float | None,
    current: int,
    expected: tuple[int | None, str],
) -> None:
    assert stages.tolerate(policy, recommended, raw, current) == expected


# ---------------------------------------------------------------- memory


@pytest.mark.parametrize(
    ("policy", "before", "tolerated", "after"),
    [
        pytest.param(
            DEFAULT,
            recs((30, 5), (50, 6)),
            4,
            recs((50, 6), (NOW, 4)),
            id="added; older than the windows dropped",
        ),
        pytest.param(
            DEFAULT, recs((30, 5), (50, 6)), None, recs((50, 6)), id="nothing to add"
        ),
        pytest.param(
            Policy(scale_down=ScalingRule(50, None, 60, 0)),
            recs((50, 6)),
            4,
            (),
            id="both windows 0: none kept",
        ),
    ],
)
def test_remember_recommendation(
    policy: Policy,
    before: tuple[Recommendation, ...],
    tolerated: int | None,
    after: tuple[Recommendation, ...],
) -> None:
    assert stages.remember_recommendation(policy, before, NOW, tolerated) == after


@pytest.mark.parametrize(
    ("before", "recommended", "after"),
    [
        pytest.param(recs((30, 8), (50, 9)), 3, recs((50, 9), (NOW, 3)), id="added"),
        pytest.param(recs((30, 8), (50, 9)), None, recs((50, 9)), id="no data"),
    ],
)
def test_remember_burst(
    before: tuple[Recommendation, ...],
    recommended: int | None,
    after: tuple[Recommendation, ...],
) -> None:
    assert stages.remember_burst(DEFAULT, before, NOW, recommended) == after


# ---------------------------------------------------------------- stabilization


@pytest.mark.parametrize(
    ("policy", "history", "current", "recommended", "expected"),
    [
        pytest.param(DEFAULT, (), 5, 3, Proposal(3, "h"), id="no history: follows"),
        pytest.param(
            DEFAULT,
            recs((50, 7), (NOW, 3)),
            5,
            3,
            Proposal(
                5, "h", ("stabilized at 5 (highest recommendation in the last 60s)",)
            ),
            id="down: not below the window's highest (nor above current)",
        ),
        pytest.param(
            DEFAULT,
            recs((50, 4), (NOW, 3)),
            5,
            3,
            Proposal(
                4, "h", ("stabilized at 4 (highest recommendation in the last 60s)",)
            ),
            id="down: to the window's highest",
        ),
        pytest.param(
            DEFAULT,
            recs((30, 9), (NOW, 3)),
            5,
            3,
            Proposal(3, "h"),
            id="down: older recommendations do not count",
        ),
        pytest.param(
            DEFAULT, recs((NOW, 8)), 5, 8, Proposal(8, "h"), id="up: no delay"
        ),
        pytest.param(
            Policy(scale_up=ScalingRule(1000, None, 1, 30)),
            recs((80, 6), (NOW, 9)),
            5,
            9,
            Proposal(
                6, "h", ("stabilized at 6 (lowest recommendation in the last 30s)",)
            ),
            id="up: not above the up window's lowest",
        ),
    ],
)
def test_stabilize(
    policy: Policy,
    history: tuple[Recommendation, ...],
    current: int,
    recommended: int,
    expected: Proposal,
) -> None:
    got = stages.stabilize(policy, history, NOW, current, Proposal(recommended, "h"))
    assert got == expected


@pytest.mark.parametrize(
    ("policy", "bursts", "current", "desired", "expected"),
    [
        pytest.param(DEFAULT, recs((90, 20)), 5, 5, 5, id="not a scale-down"),
        pytest.param(DEFAULT, (), 10, 4, 4, id="no bursts"),
        pytest.param(DEFAULT, recs((90, 20)), 15, 4, 11, id="20 / 200% + 1"),
        pytest.param(DEFAULT, recs((90, 20), (95, 8)), 15, 4, 11, id="the peak"),
        pytest.param(DEFAULT, recs((90, 20)), 8, 4, 8, id="never above current"),
        pytest.param(DEFAULT, recs((90, 6)), 10, 5, 5, id="already calm enough"),
        pytest.param(
            Policy(panic_threshold=1.5), recs((90, 6)), 10, 2, 5, id="6 / 150% + 1"
        ),
    ],
)
def test_calm_bursts(
    policy: Policy,
    bursts: tuple[Recommendation, ...],
    current: int,
    desired: int,
    expected: int,
) -> None:
    got = stages.calm_bursts(policy, bursts, current, Proposal(desired, "h"))
    assert got.desired == expected
    if expected == desired:
        assert got == Proposal(desired, "h")
    else:
        peak = max(b.replicas for b in bursts)
        assert got.notes == (
            f"kept at {expected} so that bursts of the last 60s "
            f"(→ {peak} replicas) stay under the panic threshold",
        )


@pytest.mark.parametrize(
    ("current", "distrust", "missing", "proposal", "expected"),
    [
        pytest.param(
            5,
            "no recent samples",
            [],
            Proposal(3, "h", ("stabilized at 3",)),
            Proposal(5, "held at 5: no recent samples; h"),
            id="distrusted scale-down: held, notes dropped",
        ),
        pytest.param(
            5, None, [], Proposal(3, "h"), Proposal(3, "h"), id="trusted scale-down"
        ),
        pytest.param(
            5,
            "missing data for RequestsPerSecond",
            ["RequestsPerSecond"],
            Proposal(7, "h"),
            Proposal(7, "h", ("missing data for RequestsPerSecond: no scale-down",)),
            id="scale-up on the metrics present: noted",
        ),
        pytest.param(
            5,
            "windows refilling after restart (observed 10s of 60s)",
            [],
            Proposal(5, "h"),
            Proposal(5, "h"),
            id="no scale-down to distrust",
        ),
    ],
)
def test_hold_when_distrusted(
    current: int,
    distrust: str | None,
    missing: list[str],
    proposal: Proposal,
    expected: Proposal,
) -> None:
    assert stages.hold_when_distrusted(current, distrust, missing, proposal) == expected


# ---------------------------------------------------------------- rate limits

LIMITED = Policy(
    max_replicas=50,
    scale_up=ScalingRule(100, None, 10, 0),
    scale_down=ScalingRule(50, None, 60, 60),
)


@pytest.mark.parametrize(
    ("policy", "events", "current", "desired", "expected", "note"),
    [
        pytest.param(LIMITED, (), 4, 8, 8, None, id="up: within 100%"),
        pytest.param(
            LIMITED,
            (),
            4,
            12,
            8,
            "scale-up limited to 8 (100% per 10s)",
            id="up: beyond 100%",
        ),
        pytest.param(
            LIMITED,
            (),
            0,
            3,
            1,
            "scale-up limited to 1 (100% per 10s)",
            id="up from 0 counts as from 1",
        ),
        pytest.param(
            LIMITED,
            (ScaleEvent(95, 2, 4),),
            4,
            8,
            4,
            "scale-up limited to 4 (100% per 10s)",
            id="up: from the period's lowest",
        ),
        pytest.param(
            LIMITED,
            (ScaleEvent(85, 2, 4),),
            4,
            8,
            8,
            None,
            id="up: events before the period do not count",
        ),
        pytest.param(LIMITED, (), 4, 2, 2, None, id="down: within 50%"),
        pytest.param(
            LIMITED,
            (),
            20,
            1,
            10,
            "scale-down limited to 10 (50% per 60s)",
            id="down: beyond 50%",
        ),
        pytest.param(
            LIMITED,
            (ScaleEvent(90, 20, 12),),
            12,
            1,
            10,
            "scale-down limited to 10 (50% per 60s)",
            id="down: from the period's highest",
        ),
        pytest.param(
            Policy(scale_down=ScalingRule(10, 3, 60, 60)),
            (),
            10,
            1,
            7,
            "scale-down limited to 7 (10% or 3 replicas per 60s)",
            id="down: the larger of both limits",
        ),
        pytest.param(
            Policy(scale_down=ScalingRule(None, None, 60, 60)),
            (),
            10,
            1,
            1,
            None,
            id="down: no limit set",
        ),
        pytest.param(LIMITED, (), 5, 5, 5, None, id="no change"),
    ],
)
def test_limit_rate(
    policy: Policy,
    events: tuple[ScaleEvent, ...],
    current: int,
    desired: int,
    expected: int,
    note: str | None,
) -> None:
    got = stages.limit_rate(policy, events, NOW, current, Proposal(desired, "h"))
    assert got == Proposal(expected, "h", () if note is None else (note,))


@pytest.mark.parametrize(
    ("events", "period", "counts"),
    [
        pytest.param((), 60.0, [5], id="only the current count"),
        pytest.param(
            (ScaleEvent(30, 1, 2), ScaleEvent(90, 2, 5)),
            60.0,
            [5, 2, 5],
            id="both ends of the events in the period",
        ),
        pytest.param((ScaleEvent(NOW, 2, 5),), 1.0, [5, 2, 5], id="now is inside"),
    ],
)
def test_counts_in_period(
    events: tuple[ScaleEvent, ...], period: float, counts: list[int]
) -> None:
    assert stages.counts_in_period(events, NOW, period, 5) == counts


# ---------------------------------------------------------------- bounds


@pytest.mark.parametrize(
    ("policy", "desired", "expected"),
    [
        pytest.param(Policy(min_replicas=2, max_replicas=6), 4, Proposal(4, "h")),
        pytest.param(
            Policy(min_replicas=2, max_replicas=6),
            1,
            Proposal(2, "h", ("raised to minReplicas 2",)),
            id="raised to min",
        ),
        pytest.param(
            Policy(min_replicas=2, max_replicas=6),
            9,
            Proposal(6, "h", ("clamped to maxReplicas 6",)),
            id="clamped to max",
        ),
        pytest.param(
            Policy(min_replicas=0, max_replicas=6),
            0,
            Proposal(1, "h"),
            id="min 0: at least 1 here",
        ),
    ],
)
def test_bound(policy: Policy, desired: int, expected: Proposal) -> None:
    assert stages.bound(policy, Proposal(desired, "h")) == expected


# ---------------------------------------------------------------- zero


@pytest.mark.parametrize(
    ("policy", "current", "proposal", "expected"),
    [
        pytest.param(
            TO_ZERO,
            0,
            Proposal(1, "h"),
            Proposal(1, "traffic at zero → 1 replica: h"),
            id="at zero",
        ),
        pytest.param(
            TO_ZERO,
            0,
            Proposal(3, "h", ("n",)),
            Proposal(3, "traffic at zero → 3 replicas: h; n"),
            id="the whole reason follows",
        ),
        pytest.param(TO_ZERO, 2, Proposal(3, "h"), Proposal(3, "h"), id="running"),
        pytest.param(DEFAULT, 0, Proposal(1, "h"), Proposal(1, "h"), id="min 1"),
    ],
)
def test_wake_from_zero(
    policy: Policy, current: int, proposal: Proposal, expected: Proposal
) -> None:
    assert stages.wake_from_zero(policy, current, proposal) == expected


KEEP = Proposal(3, "h")


@pytest.mark.parametrize(
    (
        "policy",
        "current",
        "mode",
        "trusted",
        "since",
        "last_traffic",
        "expected",
    ),
    [
        pytest.param(DEFAULT, 3, "stable", True, 0.0, None, (KEEP, False), id="min 1"),
        pytest.param(
            TO_ZERO, 3, "stable", True, 0.0, 80.0, (KEEP, False), id="recent traffic"
        ),
        pytest.param(
            TO_ZERO,
            3,
            "stable",
            True,
            0.0,
            50.0,
            (Proposal(0, "idle for 50s → scale to zero"), False),
            id="idle: to zero",
        ),
        pytest.param(
            TO_ZERO,
            3,
            "stable",
            True,
            0.0,
            None,
            (Proposal(0, "idle for 100s → scale to zero"), False),
            id="never any traffic: idle since observing",
        ),
        pytest.param(
            TO_ZERO, 3, "panic", True, 0.0, 50.0, (KEEP, False), id="not in panic"
        ),
        pytest.param(
            TO_ZERO, 3, "stable", False, 0.0, 50.0, (KEEP, False), id="not distrusted"
        ),
        pytest.param(
            TO_ZERO,
            3,
            "stable",
            True,
            50.0,
            None,
            (KEEP, False),
            id="not before a stable window observed",
        ),
        pytest.param(
            Policy(min_replicas=0, scale_to_zero_grace_s=120),
            3,
            "stable",
            True,
            0.0,
            None,
            (KEEP, False),
            id="not before a grace period observed",
        ),
        pytest.param(
            Policy(min_replicas=0, scale_to_zero_grace_s=80),
            3,
            "stable",
            True,
            0.0,
            10.0,
            (Proposal(0, "idle for 90s → scale to zero"), False),
            id="grace passed",
        ),
        pytest.param(
            TO_ZERO,
            0,
            "panic",
            False,
            90.0,
            50.0,
            (Proposal(0, "idle for 50s: staying at zero"), True),
            id="at zero: stays, at rest",
        ),
        pytest.param(
            TO_ZERO, 0, "stable", True, 0.0, 90.0, (KEEP, False), id="at zero: traffic"
        ),
    ],
)
def test_scale_to_zero(
    policy: Policy,
    current: int,
    mode: Mode,
    trusted: bool,
    since: float,
    last_traffic: float | None,
    expected: tuple[Proposal, bool],
) -> None:
    got = stages.scale_to_zero(
        policy,
        KEEP,
        current=current,
        mode=mode,
        trusted=trusted,
        now=NOW,
        observing_since=since,
        last_traffic_at=last_traffic,
    )
    assert got == expected


@pytest.mark.parametrize(
    ("before", "current", "desired", "after"),
    [
        pytest.param(
            (ScaleEvent(30, 1, 2),),
            2,
            4,
            (ScaleEvent(NOW, 2, 4),),
            id="recorded; older than both periods dropped",
        ),
        pytest.param(
            (ScaleEvent(50, 1, 2),), 2, 2, (ScaleEvent(50, 1, 2),), id="no change"
        ),
    ],
)
def test_record_scale(
    before: tuple[ScaleEvent, ...],
    current: int,
    desired: int,
    after: tuple[ScaleEvent, ...],
) -> None:
    assert stages.record_scale(DEFAULT, before, NOW, current, desired) == after


def test_proposal_reason_is_the_head_and_every_note() -> None:
    proposal = Proposal(3, "h").noted(4, "a").noted(5, "b")
    assert proposal == Proposal(5, "h", ("a", "b"))
    assert proposal.reason == "h; a; b"
