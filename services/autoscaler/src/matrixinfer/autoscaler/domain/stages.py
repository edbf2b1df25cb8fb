"""The stages of one decision, in the order `decide` runs them. Each is a pure
function of its arguments; ``docs/autoscaler.md`` explains the rules.

A replica count travels through the stages as a :class:`Proposal`: the count so far,
the reason's head and the notes each stage added on its way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from matrixinfer.autoscaler.domain.metric_types import PER_REPLICA_METRICS
from matrixinfer.autoscaler.domain.policy import EPS, Policy, ScalingRule
from matrixinfer.autoscaler.domain.window import Recommendation, ScaleEvent, Window

Mode = Literal["stable", "panic"]


@dataclass(frozen=True)
class Proposal:
    """A replica count on its way through the stages, and why."""

    desired: int
    head: str
    notes: tuple[str, ...] = ()

    def noted(self, desired: int, note: str) -> Proposal:
        """This proposal moved to ``desired`` by a stage that says why."""
        return replace(self, desired=desired, notes=(*self.notes, note))

    @property
    def reason(self) -> str:
        return self.head + "".join(f"; {n}" for n in self.notes)


# ---------------------------------------------------------------- wording


def replicas_text(n: int) -> str:
    return f"{n} replica" if n == 1 else f"{n} replicas"


def describe(policy: Policy, window: Window, ready: int) -> str:
    """The winning metric of ``window`` and what it asks for."""
    winner = window.winner
    if winner is None:
        return f"no data over {window.seconds:g}s"
    target = next(m.target for m in policy.metrics if m.type == winner)
    per = "per replica" if winner in PER_REPLICA_METRICS else f"with {ready} ready"
    text = (
        f"{winner} {window.averages[winner]:.1f} over {window.seconds:g}s → "
        f"{replicas_text(window.per_metric[winner] or 0)} (target {target:g} {per})"
    )
    if len(policy.metrics) > 1:
        text += f", largest of {len(policy.metrics)} metrics"
    return text


def rule_text(rule: ScalingRule) -> str:
    parts = []
    if rule.max_percent is not None:
        parts.append(f"{rule.max_percent}%")
    if rule.max_replicas is not None:
        parts.append(f"{rule.max_replicas} replicas")
    return " or ".join(parts)


# ---------------------------------------------------------------- what is known


def distrust(
    policy: Policy,
    missing: Sequence[str],
    newest: float | None,
    now: float,
    observed: float,
) -> str | None:
    """Why a scale-down would not be trusted now (None: it would be): a metric
    without data in the stable window, no sample within the panic window (``newest``
    is the time of the newest one), or less than a stable window ``observed``."""
    if missing:
        return f"missing data for {', '.join(missing)}"
    if newest is None or now - newest >= policy.panic_window_s:
        return "no recent samples"
    if observed < policy.stable_window_s:
        return (
            f"windows refilling after restart "
            f"(observed {observed:g}s of {policy.stable_window_s:g}s)"
        )
    return None


def panic_mode(
    policy: Policy,
    since: float | None,
    until: float | None,
    panic_recommendation: int | None,
    ready: int,
    current: int,
    now: float,
) -> tuple[float | None, float | None]:
    """The panic period (since, until) after this tick; (None, None) out of panic.

    Panic starts when the panic window asks for more than ``current`` and for at
    least the panic threshold of the ready replicas (at least 1); every tick that
    meets the threshold again moves its end one stable window ahead.
    """
    over = (
        panic_recommendation is not None
        and panic_recommendation / max(ready, 1) >= policy.panic_threshold
    )
    if since is None:
        if over and panic_recommendation is not None and panic_recommendation > current:
            return now, now + policy.stable_window_s
        return since, until
    if over:
        return since, now + policy.stable_window_s
    if until is None or now >= until:
        return None, None
    return since, until


def tolerate(
    policy: Policy, recommended: int | None, raw: float | None, current: int
) -> tuple[int | None, str]:
    """The stable recommendation after tolerance, and a note when it kept the
    count: ``raw`` (the recommendation before rounding up) within the tolerance of
    ``current`` keeps ``current``."""
    if recommended is None:
        return None, ""
    if (
        current > 0
        and raw is not None
        and recommended != current
        and abs(raw / current - 1) <= policy.tolerance + EPS
    ):
        return current, f"; within {policy.tolerance:.0%} tolerance of {current} → keep"
    return recommended, ""


def remember_recommendation(
    policy: Policy,
    recommendations: tuple[Recommendation, ...],
    now: float,
    tolerated: int | None,
) -> tuple[Recommendation, ...]:
    """The stable recommendations stabilization looks at: this tick's added, those
    older than both stabilization windows dropped."""
    if tolerated is not None:
        recommendations = (*recommendations, Recommendation(now, tolerated))
    keep_s = max(
        policy.scale_up.stabilization_window_s, policy.scale_down.stabilization_window_s
    )
    return tuple(r for r in recommendations if now - keep_s < r.time)


def remember_burst(
    policy: Policy,
    bursts: tuple[Recommendation, ...],
    now: float,
    panic_recommendation: int | None,
) -> tuple[Recommendation, ...]:
    """The panic-window recommendations of the last stable window."""
    kept = tuple(b for b in bursts if now - policy.stable_window_s < b.time <= now)
    if panic_recommendation is not None:
        kept = (*kept, Recommendation(now, panic_recommendation))
    return kept


# ---------------------------------------------------------------- where to start


def panic_proposal(policy: Policy, panic: Window, ready: int, current: int) -> Proposal:
    """In panic: the panic window's recommendation, never below ``current``."""
    recommended = panic.recommendation
    return Proposal(
        max(recommended if recommended is not None else current, current),
        f"panic: {describe(policy, panic, ready)}; no scale-down until "
        f"{policy.stable_window_s:g}s after load last reached "
        f"{policy.panic_threshold:.0%} of ready replicas",
    )


def hold(current: int, distrust: str | None) -> Proposal:
    """No stable recommendation at all: keep ``current``."""
    return Proposal(
        current, f"held at {current}: {distrust}" if current else f"{distrust}"
    )


# ---------------------------------------------------------------- out of panic


def stabilize(
    policy: Policy,
    recommendations: tuple[Recommendation, ...],
    now: float,
    current: int,
    proposal: Proposal,
) -> Proposal:
    """HPA stabilization: no lower than the highest recommendation of the
    scale-down window, no higher than the lowest of the scale-up window."""
    recommended = proposal.desired

    def recent(window_s: float) -> list[int]:
        return [
            r.replicas for r in recommendations if now - window_s < r.time <= now
        ] or [recommended]

    down_floor = max(recent(policy.scale_down.stabilization_window_s))
    up_ceiling = min(recent(policy.scale_up.stabilization_window_s))
    desired = min(max(current, up_ceiling), down_floor)
    if desired > recommended:
        return proposal.noted(
            desired,
            f"stabilized at {desired} (highest recommendation in the last "
            f"{policy.scale_down.stabilization_window_s:g}s)",
        )
    if desired < recommended:
        return proposal.noted(
            desired,
            f"stabilized at {desired} (lowest recommendation in the last "
            f"{policy.scale_up.stabilization_window_s:g}s)",
        )
    return proposal


def calm_bursts(
    policy: Policy,
    bursts: tuple[Recommendation, ...],
    current: int,
    proposal: Proposal,
) -> Proposal:
    """A scale-down stops at the smallest count at which the highest burst of the
    last stable window stays under the panic threshold."""
    if proposal.desired >= current or not bursts:
        return proposal
    peak = max(b.replicas for b in bursts)
    calm = min(current, math.floor(peak / policy.panic_threshold + EPS) + 1)
    if proposal.desired >= calm:
        return proposal
    return proposal.noted(
        calm,
        f"kept at {calm} so that bursts of the last "
        f"{policy.stable_window_s:g}s (→ {replicas_text(peak)}) stay under "
        f"the panic threshold",
    )


def hold_when_distrusted(
    current: int,
    distrust: str | None,
    missing: Sequence[str],
    proposal: Proposal,
) -> Proposal:
    """Missing data never causes a scale-down: a distrusted one keeps ``current``
    (the earlier notes no longer apply); a missing metric is noted otherwise."""
    if proposal.desired < current and distrust is not None:
        return Proposal(current, f"held at {current}: {distrust}; {proposal.head}")
    if missing:
        return proposal.noted(
            proposal.desired, f"missing data for {', '.join(missing)}: no scale-down"
        )
    return proposal


# ---------------------------------------------------------------- in every mode


def counts_in_period(
    events: tuple[ScaleEvent, ...], now: float, period: float, current: int
) -> list[int]:
    """Every replica count the ModelInfer had in the last ``period`` seconds."""
    counts = [current]
    for e in events:
        if now - period < e.time <= now:
            counts += (e.from_replicas, e.to_replicas)
    return counts


def limit_rate(
    policy: Policy,
    events: tuple[ScaleEvent, ...],
    now: float,
    current: int,
    proposal: Proposal,
) -> Proposal:
    """Per-direction limits over a sliding period: a scale-up measured from the
    lowest count of its period (0 counts as 1), a scale-down from the highest."""
    desired = proposal.desired
    if desired > current:
        up = policy.scale_up
        low = min(counts_in_period(events, now, up.period_s, current))
        allowance = up.allowance(max(low, 1))
        if allowance is not None and desired > low + allowance:
            limited = max(current, low + allowance)
            return proposal.noted(
                limited,
                f"scale-up limited to {limited} ({rule_text(up)} per {up.period_s:g}s)",
            )
    elif desired < current:
        down = policy.scale_down
        high = max(counts_in_period(events, now, down.period_s, current))
        allowance = down.allowance(high)
        if allowance is not None and desired < high - allowance:
            limited = min(current, high - allowance)
            return proposal.noted(
                limited,
                f"scale-down limited to {limited} "
                f"({rule_text(down)} per {down.period_s:g}s)",
            )
    return proposal


def bound(policy: Policy, proposal: Proposal) -> Proposal:
    """Clamp to ``[max(minReplicas, 1), maxReplicas]``; 0 is only reached through
    :func:`scale_to_zero`."""
    floor = max(policy.min_replicas, 1)
    if proposal.desired < floor:
        proposal = (
            proposal.noted(floor, f"raised to minReplicas {floor}")
            if policy.min_replicas > 0
            else replace(proposal, desired=floor)
        )
    if proposal.desired > policy.max_replicas:
        proposal = proposal.noted(
            policy.max_replicas, f"clamped to maxReplicas {policy.max_replicas}"
        )
    return proposal


def wake_from_zero(policy: Policy, current: int, proposal: Proposal) -> Proposal:
    """At zero, any count above zero is traffic waking the ModelInfer: say so."""
    if current == 0 and proposal.desired > 0 and policy.min_replicas == 0:
        return Proposal(
            proposal.desired,
            f"traffic at zero → {replicas_text(proposal.desired)}: {proposal.reason}",
        )
    return proposal


def scale_to_zero(
    policy: Policy,
    proposal: Proposal,
    *,
    current: int,
    mode: Mode,
    trusted: bool,
    now: float,
    observing_since: float,
    last_traffic_at: float | None,
) -> tuple[Proposal, bool]:
    """Zero after the idle period, only with ``minReplicas == 0``.

    At zero without recent traffic the count stays at zero, and the second value is
    True: at rest, out of panic. A running ModelInfer goes to zero at once when
    idle, out of panic, ``trusted`` (no reason to distrust a scale-down) and
    observed for ``max(stable window, grace period)``.
    """
    if policy.min_replicas != 0:
        return proposal, False
    if last_traffic_at is not None and now - last_traffic_at < policy.idle_s:
        return proposal, False
    quiet_for = now - (
        last_traffic_at if last_traffic_at is not None else observing_since
    )
    if current == 0:
        return Proposal(0, f"idle for {quiet_for:g}s: staying at zero"), True
    observed = now - observing_since
    if (
        mode == "stable"
        and trusted
        and observed >= max(policy.stable_window_s, policy.scale_to_zero_grace_s)
    ):
        return Proposal(0, f"idle for {quiet_for:g}s → scale to zero"), False
    return proposal, False


def record_scale(
    policy: Policy,
    events: tuple[ScaleEvent, ...],
    now: float,
    current: int,
    desired: int,
) -> tuple[ScaleEvent, ...]:
    """The scale events the rate limits look at: this one added (if the count
    changes), those older than both periods dropped."""
    if desired != current:
        events = (*events, ScaleEvent(now, current, desired))
    keep_s = max(policy.scale_up.period_s, policy.scale_down.period_s)
    return tuple(e for e in events if now - keep_s < e.time)
