"""The slow path's decisions for one call, without a transport: which replica is
tried next when one fails, what ends the tries, and how long a call may take."""

from __future__ import annotations

import time
from typing import Any

import pytest

from matrixinfer.core.errors import ResourceExhausted, Unavailable
from matrixinfer.gateway.domain.balancer import Balancer
from matrixinfer.gateway.domain.dispatch import Dispatcher, UpstreamError
from matrixinfer.gateway.domain.load import LoadTracker
from matrixinfer.gateway.domain.routing import RoutingTable, Server

A, B, C = "10.0.0.1:8001", "10.0.0.2:8001", "10.0.0.3:8001"


async def never_changes() -> None:
    raise AssertionError("not waited on here")


def dispatcher() -> Dispatcher:
    unused: Any = None  # authentication and activation are not exercised here
    return Dispatcher(
        table=RoutingTable,
        authenticator=unused,
        activator=unused,
        tracker=LoadTracker(),
        table_changed=never_changes,
        balancer=Balancer(),
        default_timeout_s=30.0,
        max_timeout_s=60.0,
    )


def server(*replicas: str, **fields: Any) -> Server:
    return Server("default", "iris", "iris", tuple(replicas), **fields)


class Replicas:
    """Answers per replica address: a status name raises UpstreamError."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.tried: list[str] = []

    async def send(self, address: str, timeout_s: float) -> bytes:
        self.tried.append(address)
        answer = self.answers[address]
        if answer != "OK":
            raise UpstreamError(answer, f"{answer} from {address}")
        return address.encode()


async def test_unavailable_is_tried_on_another_replica() -> None:
    replicas = Replicas({A: "UNAVAILABLE", B: "UNAVAILABLE", C: "OK"})
    answer = await dispatcher().forward(
        "ModelInfer", "iris", server(A, B, C), None, time.monotonic() + 5, replicas.send
    )
    # Each replica at most once, until the one that answers.
    assert answer == C.encode()
    assert replicas.tried[-1] == C
    assert len(set(replicas.tried)) == len(replicas.tried)


async def test_a_call_that_ran_is_not_retried() -> None:
    replicas = Replicas({A: "INTERNAL", B: "INTERNAL"})
    with pytest.raises(UpstreamError) as raised:
        await dispatcher().forward(
            "ModelInfer",
            "iris",
            server(A, B),
            None,
            time.monotonic() + 5,
            replicas.send,
        )
    assert raised.value.code == "INTERNAL"
    assert len(replicas.tried) == 1


async def test_tries_end_after_the_retry_budget() -> None:
    replicas = Replicas({A: "UNAVAILABLE", B: "UNAVAILABLE", C: "UNAVAILABLE"})
    with pytest.raises(Unavailable, match="no replica of model 'iris' answered"):
        await dispatcher().forward(
            "ModelInfer",
            "iris",
            server(A, B, C, retry_attempts=1),
            None,
            time.monotonic() + 5,
            replicas.send,
        )
    assert len(replicas.tried) == 2


async def test_no_replica_and_full_replicas_are_told_apart() -> None:
    replicas = Replicas({})
    with pytest.raises(Unavailable, match="has no ready replica"):
        await dispatcher().forward(
            "ModelInfer", "iris", server(), None, time.monotonic() + 5, replicas.send
        )
    busy = dispatcher()
    busy.balancer.started(A)
    with pytest.raises(ResourceExhausted, match="at its concurrency limit"):
        await busy.forward(
            "ModelInfer",
            "iris",
            server(A, max_concurrent_per_replica=1),
            None,
            time.monotonic() + 5,
            replicas.send,
        )
    assert replicas.tried == []


@pytest.mark.parametrize(
    ("remaining", "rule_ms", "timeout_ms", "expected"),
    [
        (None, 0, 30_000, 30.0),  # the gateway's default, within the target's
        (2.0, 0, 30_000, 2.0),  # the caller's deadline
        (90.0, 0, 120_000, 60.0),  # the gateway's ceiling
        (10.0, 500, 30_000, 0.5),  # the rule's timeout
        (10.0, 0, 1_000, 1.0),  # the target's timeout
    ],
)
def test_deadline_is_the_smallest_bound(
    remaining: float | None, rule_ms: int, timeout_ms: int, expected: float
) -> None:
    before = time.monotonic()
    deadline = dispatcher().deadline(
        remaining, server(A, timeout_ms=timeout_ms), rule_ms
    )
    assert before + expected <= deadline <= time.monotonic() + expected
