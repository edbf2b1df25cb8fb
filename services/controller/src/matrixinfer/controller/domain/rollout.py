"""What to do with a ModelInfer's replicas: a pure function of the wanted state, the
replicas there are, and the clock.

Like a Kubernetes Deployment: new-template replicas surge up to ``maxSurge`` above the
desired count; old ones are drained only while at least ``desired - maxUnavailable``
replicas stay ready; a draining replica is stopped once the drain period has passed,
so a router that watches the endpoints has moved its traffic away first.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReplicaView:
    name: str
    template: str
    ready: bool
    draining: bool = False
    draining_since_s: float = 0.0


@dataclass(frozen=True)
class Plan:
    start: int = 0
    drain: tuple[str, ...] = ()
    stop: tuple[str, ...] = ()

    @property
    def idle(self) -> bool:
        return not (self.start or self.drain or self.stop)


def plan(
    desired: int,
    max_surge: int,
    max_unavailable: int,
    template: str,
    replicas: list[ReplicaView],
    now_s: float,
    drain_s: float,
) -> Plan:
    stop = [
        r.name for r in replicas if r.draining and now_s - r.draining_since_s >= drain_s
    ]
    active = [r for r in replicas if not r.draining]
    new = [r for r in active if r.template == template]
    old = [r for r in active if r.template != template]
    drain: list[str] = []
    if len(new) > desired:  # scaled down: the not-ready ones go first
        extra = sorted(new, key=lambda r: (r.ready, r.name))[: len(new) - desired]
        drain += [r.name for r in extra]
        new = [r for r in new if r not in extra]
    start = 0
    if len(new) < desired:
        room = desired + max_surge - (len(new) + len(old))
        start = max(0, min(desired - len(new), room))
    # Old replicas that serve nothing can go at once; ready ones only while enough
    # replicas stay ready.
    stop += [r.name for r in old if not r.ready]
    old_ready = [r for r in old if r.ready]
    available = sum(r.ready for r in new) + len(old_ready)
    removable = available - max(0, desired - max_unavailable)
    drain += [r.name for r in old_ready[: max(0, removable)]]
    return Plan(start, tuple(drain), tuple(stop))
