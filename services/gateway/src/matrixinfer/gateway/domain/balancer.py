"""Choosing a replica: least outstanding requests between two random candidates
(power of two choices), a per-replica concurrency cap, and outlier ejection after
consecutive failures. State is per gateway process and small."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


def _weight(key: str, replica: str) -> bytes:
    return hashlib.blake2b(f"{key}\0{replica}".encode(), digest_size=8).digest()


@dataclass
class ReplicaState:
    outstanding: int = 0
    consecutive_failures: int = 0
    ejected_until_s: float = 0.0


@dataclass
class Balancer:
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    _state: dict[str, ReplicaState] = field(default_factory=dict)

    def state(self, address: str) -> ReplicaState:
        state = self._state.get(address)
        if state is None:
            state = self._state[address] = ReplicaState()
        return state

    def pick(
        self,
        replicas: Sequence[str],
        exclude: set[str],
        cap: int = 0,
        affinity: str | None = None,
    ) -> str | None:
        """A replica for one call. With ``affinity`` (a sticky header's value) the
        same replica is chosen while it is available (rendezvous hashing: when a
        replica goes, only its own keys move)."""
        now = self.clock()
        candidates = [
            r
            for r in replicas
            if r not in exclude
            and self.state(r).ejected_until_s <= now
            and (cap <= 0 or self.state(r).outstanding < cap)
        ]
        if not candidates:
            # Everyone ejected: better to try an ejected replica than to fail outright.
            candidates = [r for r in replicas if r not in exclude and (
                cap <= 0 or self.state(r).outstanding < cap)]  # fmt: skip
            if not candidates:
                return None
        if len(candidates) == 1:
            return candidates[0]
        if affinity is not None:
            return max(candidates, key=lambda r: _weight(affinity, r))
        a, b = self.rng.sample(candidates, 2)
        return a if self.state(a).outstanding <= self.state(b).outstanding else b

    def started(self, address: str) -> None:
        self.state(address).outstanding += 1

    def finished(
        self, address: str, failed: bool, max_failures: int, ejection_s: float
    ) -> None:
        state = self.state(address)
        state.outstanding -= 1
        if not failed:
            state.consecutive_failures = 0
            return
        state.consecutive_failures += 1
        if state.consecutive_failures >= max_failures:
            state.ejected_until_s = self.clock() + ejection_s
            state.consecutive_failures = 0

    def forget_except(self, live: set[str]) -> None:
        """Drop state of replicas that are gone (keeps memory bounded)."""
        for address in [a for a in self._state if a not in live]:
            if self._state[address].outstanding == 0:
                del self._state[address]
