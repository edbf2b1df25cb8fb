"""What the slow path decides for one model-scoped call, whatever transport carries
it (the gRPC surface, or REST through it): who may call (authentication, then
authorization), where the call goes (the routing table's rule, target and sticky
key), how long it may take, waiting for a model at zero replicas (activation),
which calls are mirrored, and which replica is tried next when one fails.

The surfaces only convert: bytes in, bytes out, and an upstream's error status as
:class:`UpstreamError` (a status name and Triton's cleaned message) both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from matrixinfer.core.errors import (
    DeadlineExceeded,
    ResourceExhausted,
    Unavailable,
)
from matrixinfer.gateway.domain.auth import Authenticator, authorize_infer
from matrixinfer.gateway.domain.balancer import Balancer
from matrixinfer.gateway.domain.load import LoadTracker
from matrixinfer.gateway.domain.ports import Activator
from matrixinfer.gateway.domain.routing import Route, RoutingTable, Rule, Server

T = TypeVar("T")

#: Upstream statuses that count against a replica's health (passive ejection).
_REPLICA_FAILURES = ("UNAVAILABLE", "INTERNAL")


class UpstreamError(Exception):
    """A replica answered with an error status (its name, e.g. ``UNAVAILABLE``); it
    goes to the caller as it is, with Triton's message cleaned by the surface."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Admitted:
    """One admitted call: its route, the rule it matched, the target and, when the
    target asks for sticky routing, the caller's key; ``headers`` holds the last
    value of each header (what routing read)."""

    route: Route
    rule: Rule
    server: Server
    affinity: str | None
    headers: dict[str, str]


class Dispatcher:
    def __init__(
        self,
        table: Callable[[], RoutingTable],
        authenticator: Authenticator,
        activator: Activator,
        tracker: LoadTracker,
        table_changed: Callable[[], Awaitable[None]],
        balancer: Balancer,
        default_timeout_s: float,
        max_timeout_s: float,
        max_held_per_model: int = 1000,
        max_mirrors: int = 64,
    ) -> None:
        self.table = table
        self.tracker = tracker
        self.balancer = balancer
        self._authenticator = authenticator
        self._activator = activator
        self._table_changed = table_changed
        self._default_timeout_s = default_timeout_s
        self._max_timeout_s = max_timeout_s
        self._max_held_per_model = max_held_per_model
        self._max_mirrors = max_mirrors
        # Activations in flight, one per ModelInfer (held calls share it).
        self._activations: dict[tuple[str, str], asyncio.Task[None]] = {}
        # Mirrored copies run beside the real traffic; bounded, so a slow mirror
        # target can never pile up work in the gateway.
        self._mirrors: set[asyncio.Task[None]] = set()
        self._rng = random.Random()

    def admit(
        self, all_headers: dict[str, list[str]], name: str, version: str
    ) -> Admitted:
        """Authenticate, authorize and route one call (in that order: nothing about
        a model is revealed to a caller who may not use it; HAProxy has applied the
        route's rate limit before handing the call over)."""
        principal = self._authenticator.authenticate(all_headers)
        authorize_infer(principal, name)
        headers = {k: v[-1] for k, v in all_headers.items()}
        route, rule, server = self.table().resolve(
            name, version, headers, principal.tenant
        )
        affinity = headers.get(server.hash_header) if server.hash_header else None
        return Admitted(route, rule, server, affinity, headers)

    def deadline(
        self, time_remaining_s: float | None, server: Server, rule_ms: int
    ) -> float:
        """The monotonic time the call must end by: the caller's deadline (or the
        default) capped by the rule's or target's timeout and the gateway's."""
        cap = (rule_ms or server.timeout_ms) / 1000.0
        wanted = (
            time_remaining_s
            if time_remaining_s is not None
            else self._default_timeout_s
        )
        return time.monotonic() + max(0.0, min(wanted, cap, self._max_timeout_s))

    async def hold(
        self,
        name: str,
        version: str,
        headers: dict[str, str],
        server: Server,
        deadline: float,
    ) -> Server:
        """Wait for a replica of a model scaled to zero, asking for one first."""
        key = (server.namespace, server.model_infer)
        load = self.tracker.load(key)
        if load.held >= self._max_held_per_model:
            raise ResourceExhausted(
                f"too many requests are waiting for model {name!r} to start",
                retry_after_s=1.0,
            )
        load.held += 1
        if key not in self._activations:  # one activation at a time per model
            activation = asyncio.create_task(
                self._activator.activate(server.namespace, server.model_infer)
            )
            self._activations[key] = activation
            activation.add_done_callback(lambda _: self._activations.pop(key, None))
        try:
            while not server.replicas:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeadlineExceeded(
                        f"model {name!r} had no ready replica before the deadline"
                    )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._table_changed()
                _, _, server = self.table().resolve(name, version, headers)
            return server
        finally:
            load.held -= 1

    def mirror(
        self,
        mirror: tuple[Server, int] | None,
        send: Callable[[str, Server], Coroutine[Any, Any, None]],
    ) -> None:
        """Send a copy to the rule's mirror target for its share of calls, in the
        background (``send(address, target)``; its failures are its own)."""
        if mirror is None:
            return
        target, percent = mirror
        if (
            self._rng.uniform(0, 100) >= percent
            or len(self._mirrors) >= self._max_mirrors
        ):
            return
        address = self.balancer.pick(
            target.replicas, set(), target.max_concurrent_per_replica
        )
        if address is None:
            return
        task = asyncio.create_task(send(address, target))
        self._mirrors.add(task)
        task.add_done_callback(self._mirrors.discard)

    async def forward(
        self,
        what: str,
        name: str,
        server: Server,
        affinity: str | None,
        deadline: float,
        send: Callable[[str, float], Awaitable[T]],
    ) -> T:
        """``send(address, seconds left)`` to a replica the balancer picks; a replica
        that answers UNAVAILABLE (the call never ran) is left for another, as often
        as the target's retry policy allows."""
        tried: set[str] = set()
        last: UpstreamError | None = None
        for _ in range(1 + max(0, server.retry_attempts)):
            address = self.balancer.pick(
                server.replicas, tried, server.max_concurrent_per_replica, affinity
            )
            if address is None:
                break
            tried.add(address)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"{what} for model {name!r} ran out of time")
            self.balancer.started(address)
            failed = False
            try:
                return await send(address, remaining)
            except UpstreamError as e:
                failed = e.code in _REPLICA_FAILURES
                if e.code == "UNAVAILABLE" and "UNAVAILABLE" in server.retry_on:
                    last = e
                    continue
                raise
            finally:
                self.balancer.finished(
                    address, failed, server.consecutive_errors, server.ejection_s
                )
        if last is not None:
            raise Unavailable(f"no replica of model {name!r} answered: {last.message}")
        if server.replicas and server.max_concurrent_per_replica:
            raise ResourceExhausted(
                f"every replica of model {name!r} is at its concurrency limit",
                retry_after_s=0.1,
            )
        raise Unavailable(f"model {name!r} has no ready replica")
