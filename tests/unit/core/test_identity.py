"""The current caller's identity: set for one call, gone after it, separate per task."""

from __future__ import annotations

import asyncio

from matrixinfer.core.identity import ANONYMOUS, Identity, acting_as, current


def test_outside_a_call_the_caller_is_anonymous() -> None:
    assert current() == ANONYMOUS


def test_acting_as_sets_the_identity_for_the_body_only() -> None:
    admin = Identity("key:k1", frozenset({"admin"}))
    with acting_as(admin):
        assert current() == admin
    assert current() == ANONYMOUS


async def test_concurrent_calls_keep_their_own_identity() -> None:
    async def call(name: str) -> str:
        with acting_as(Identity(name)):
            await asyncio.sleep(0.01)
            return current().name

    names = await asyncio.gather(call("service:gateway"), call("jwt:alice"))
    assert list(names) == [
        "service:gateway",
        "jwt:alice",
    ]
