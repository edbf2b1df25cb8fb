"""The autoscaler's decision: how many replicas a ModelInfer should have now.

`decide` is a pure function of the policy, an immutable `WindowState`, the time and
the replica counts: no clock, no I/O, no randomness. The loop gathers one `Sample`
per tick, folds it into the state with `WindowState.with_sample`, calls `decide`,
acts on `Decision.desired` and keeps the returned state for the next tick.

`decide` runs the stages of :mod:`matrixinfer.autoscaler.domain.stages`; the rules
and where they come from (Knative's windows and panic, Kubernetes HPA's tolerance,
stabilization and rate limits) are in ``docs/autoscaler.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from matrixinfer.autoscaler.domain import stages
from matrixinfer.autoscaler.domain.policy import Policy
from matrixinfer.autoscaler.domain.stages import Mode
from matrixinfer.autoscaler.domain.window import WindowState, measure


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
    stable = measure(policy, samples, policy.stable_window_s, now, ready)
    panic = measure(policy, samples, policy.panic_window_s, now, ready)

    missing = stable.missing
    newest = max((s.time for s in samples if s.time <= now), default=None)
    observed = now - state.observing_since
    distrust = stages.distrust(policy, missing, newest, now, observed)
    panic_since, panic_until = stages.panic_mode(
        policy,
        state.panic_since,
        state.panic_until,
        panic.recommendation,
        ready,
        current,
        now,
    )
    winner = stable.winner
    tolerated, tolerance_note = stages.tolerate(
        policy,
        stable.recommendation,
        stable.raw[winner] if winner is not None else None,
        current,
    )
    recommendations = stages.remember_recommendation(
        policy, state.recommendations, now, tolerated
    )
    bursts = stages.remember_burst(policy, state.bursts, now, panic.recommendation)

    mode: Mode
    if panic_since is not None:
        mode, per_metric = "panic", panic.per_metric
        proposal = stages.panic_proposal(policy, panic, ready, current)
    elif tolerated is None:
        mode, per_metric = "stable", stable.per_metric
        proposal = stages.hold(current, distrust)
    else:
        mode, per_metric = "stable", stable.per_metric
        proposal = stages.Proposal(
            tolerated, stages.describe(policy, stable, ready) + tolerance_note
        )
        proposal = stages.stabilize(policy, recommendations, now, current, proposal)
        proposal = stages.calm_bursts(policy, bursts, current, proposal)
        proposal = stages.hold_when_distrusted(current, distrust, missing, proposal)
    proposal = stages.limit_rate(policy, state.scale_events, now, current, proposal)
    proposal = stages.bound(policy, proposal)
    proposal = stages.wake_from_zero(policy, current, proposal)
    proposal, at_rest = stages.scale_to_zero(
        policy,
        proposal,
        current=current,
        mode=mode,
        trusted=distrust is None,
        now=now,
        observing_since=state.observing_since,
        last_traffic_at=state.last_traffic_at,
    )
    if at_rest:
        panic_since = panic_until = None
        mode = "stable"

    decision = Decision(
        desired=proposal.desired,
        mode=mode,
        reason=proposal.reason,
        per_metric=per_metric,
        stable_desired=stable.recommendation,
        panic_desired=panic.recommendation,
    )
    new_state = replace(
        state,
        samples=samples,
        panic_since=panic_since,
        panic_until=panic_until,
        recommendations=recommendations,
        bursts=bursts,
        scale_events=stages.record_scale(
            policy, state.scale_events, now, current, proposal.desired
        ),
        horizon_s=policy.horizon_s,
    )
    return decision, new_state
