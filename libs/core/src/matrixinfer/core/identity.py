"""Who is making the current call.

A service's authentication (its gRPC interceptor or HTTP middleware) sets the caller's
identity for the duration of one call; whatever records or authorizes actions (the
registry's audit log, scope checks) reads it here instead of threading it through
every signature. Outside any authenticated call it is ``ANONYMOUS``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Identity:
    #: How logs and the audit log name the caller: ``service:controller`` (a service
    #: certificate), ``key:<key id>``, ``jwt:<subject>``, ``cert:<subject>``, or
    #: ``anonymous``.
    name: str
    #: What it may do: ``admin``, ``read``, ``infer:*``, ... (empty: nothing granted
    #: beyond what unauthenticated callers may do).
    scopes: frozenset[str] = field(default_factory=frozenset)


ANONYMOUS = Identity("anonymous")

_current: ContextVar[Identity] = ContextVar("matrixinfer_identity", default=ANONYMOUS)


def current() -> Identity:
    """The identity of the call being served (``ANONYMOUS`` outside one)."""
    return _current.get()


@contextlib.contextmanager
def acting_as(identity: Identity) -> Iterator[Identity]:
    """Run the body as ``identity``; the previous identity comes back after it."""
    token = _current.set(identity)
    try:
        yield identity
    finally:
        _current.reset(token)
