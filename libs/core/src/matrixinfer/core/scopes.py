"""The scope grammar every credential is judged by (docs/security.md says it for
users).

Scopes a user's credential (API key or JWT) may carry:

* ``infer:*`` / ``infer:<model>``: the data plane (the gateway), nothing else.
* ``read``: Get, List, Watch and ListRevisions on every namespace.
* ``read:ns/<namespace>``: the same, in one namespace.
* ``admin``: everything, everywhere (writes, API keys, controller logs, the
  gateway's admin API).
* ``admin:ns/<namespace>``: reads and writes of the objects in one namespace;
  never API keys (a namespace admin could otherwise mint a global admin key).

Scopes only a service certificate carries (never grantable to a key):
``registry:status`` (UpdateStatus, UpdateFinalizers), ``controller:scale`` (Scale,
GetReplicas) and ``autoscaler:load`` (ReportLoad, Activate).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

from matrixinfer.core.identity import Identity
from matrixinfer.core.pki import ADMIN

ADMIN_SCOPE = "admin"
READ_SCOPE = "read"
STATUS_SCOPE = "registry:status"
SCALE_SCOPE = "controller:scale"
LOAD_SCOPE = "autoscaler:load"

#: What each service's certificate lets it do: only what it calls.
SERVICE_SCOPES: dict[str, frozenset[str]] = {
    # Watches its kinds, writes their status and finalizers, reads API keys to
    # check GetLogs callers.
    "controller": frozenset({READ_SCOPE, STATUS_SCOPE}),
    # Watches policies and ModelInfers, writes policy status, calls the controller.
    "autoscaler": frozenset({READ_SCOPE, STATUS_SCOPE, SCALE_SCOPE}),
    # Watches routes, servers, ModelInfers and API keys, reports load to and
    # activates through the autoscaler. Its admin API forwards the caller's own
    # credential, so admin writes need the caller's admin scope.
    "gateway": frozenset({READ_SCOPE, LOAD_SCOPE}),
    # Calls nobody.
    "registry": frozenset(),
    # The CLI's admin client certificate (made by `matrixinfer up`).
    ADMIN: frozenset({ADMIN_SCOPE}),
}

#: The grammar of a scope a key may be created with (the registry's admission).
GRANTABLE_SCOPE = re.compile(
    r"admin|read|infer:\*|infer:[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
    r"|(?:admin|read):ns/[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
)

Action = Literal["read", "write"]


def allows(scopes: Iterable[str], action: Action, namespace: str | None) -> bool:
    """Whether ``scopes`` permit ``action`` on ``namespace`` (None: every
    namespace, or something that belongs to none such as API keys)."""
    have = frozenset(scopes)
    if ADMIN_SCOPE in have:
        return True
    if namespace is not None and f"admin:ns/{namespace}" in have:
        return True
    if action == "read":
        if READ_SCOPE in have:
            return True
        return namespace is not None and f"read:ns/{namespace}" in have
    return False


def needed(action: Action, namespace: str | None) -> str:
    """The scopes that would permit ``action``, as a message names them."""
    if action == "write":
        if namespace is None:
            return ADMIN_SCOPE
        return f"{ADMIN_SCOPE} or admin:ns/{namespace}"
    if namespace is None:
        return f"{READ_SCOPE} or {ADMIN_SCOPE}"
    return f"{READ_SCOPE}, read:ns/{namespace}, admin or admin:ns/{namespace}"


def require(
    identity: Identity, action: Action, namespace: str | None, what: str
) -> None:
    """Raise PermissionDenied naming the scope needed unless ``identity`` may."""
    from matrixinfer.core.errors import PermissionDenied

    if not allows(identity.scopes, action, namespace):
        raise PermissionDenied(
            f"{identity.name} may not {what}: needs scope {needed(action, namespace)}"
        )
