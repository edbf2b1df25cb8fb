"""Rollout planning tables: surge, availability, drain, scale up and down."""

from __future__ import annotations

import pytest

from matrixinfer.controller.domain.rollout import Plan, ReplicaView, plan


def r(
    name: str, template: str = "new", ready: bool = True, since: float | None = None
) -> ReplicaView:
    return ReplicaView(name, template, ready, since is not None, since or 0.0)


@pytest.mark.parametrize(
    ("desired", "surge", "unavailable", "replicas", "expected"),
    [
        # fresh: start everything
        (2, 1, 0, [], Plan(start=2)),
        # steady: nothing to do
        (2, 1, 0, [r("a"), r("b")], Plan()),
        # scale up by one
        (3, 1, 0, [r("a"), r("b")], Plan(start=1)),
        # scale down: the not-ready one goes first
        (1, 1, 0, [r("a"), r("b", ready=False)], Plan(drain=("b",))),
        # to zero
        (0, 1, 0, [r("a"), r("b")], Plan(drain=("a", "b"))),
        # rollout start: surge one new, keep both old (none may be unavailable)
        (2, 1, 0, [r("o1", "old"), r("o2", "old")], Plan(start=1)),
        # new one starting: wait
        (2, 1, 0, [r("o1", "old"), r("o2", "old"), r("n1", ready=False)], Plan()),
        # new one ready: drain one old, which makes room for the next new one later
        (2, 1, 0, [r("o1", "old"), r("o2", "old"), r("n1")], Plan(drain=("o1",))),
        # no surge, one may be unavailable: drain first, then start
        (2, 0, 1, [r("o1", "old"), r("o2", "old")], Plan(drain=("o1",))),
        (2, 0, 1, [r("o1", "old", since=0.0), r("o2", "old")], Plan(start=1)),
        # old replicas that are not ready are stopped at once
        (1, 1, 0, [r("o1", "old", ready=False), r("n1")], Plan(stop=("o1",))),
        # a new revision that never gets ready keeps the old one serving
        (1, 1, 0, [r("o1", "old"), r("n1", ready=False)], Plan()),
    ],
)
def test_plan(
    desired: int,
    surge: int,
    unavailable: int,
    replicas: list[ReplicaView],
    expected: Plan,
) -> None:
    assert (
        plan(desired, surge, unavailable, "new", replicas, now_s=1.0, drain_s=5.0)
        == expected
    )


def test_draining_replicas_stop_after_the_drain_period() -> None:
    replicas = [r("o1", "old", since=10.0), r("n1")]
    assert plan(1, 1, 0, "new", replicas, now_s=12.0, drain_s=5.0) == Plan()
    assert plan(1, 1, 0, "new", replicas, now_s=15.0, drain_s=5.0) == Plan(stop=("o1",))
