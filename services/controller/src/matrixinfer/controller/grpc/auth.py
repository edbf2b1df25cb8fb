"""Who may call the controller (docs/security.md, "Control-plane authorization").

The autoscaler scales (Scale, GetReplicas); replica logs (GetLogs) are for admins:
an API key with the ``admin`` scope or the admin client certificate. Any other
service certificate (the gateway's, say) is refused PERMISSION_DENIED.
"""

from __future__ import annotations

from matrixinfer.core.scopes import ADMIN_SCOPE, SCALE_SCOPE

#: Method → the scopes any one of which lets a caller call it.
POLICY: dict[str, frozenset[str]] = {
    "Scale": frozenset({SCALE_SCOPE, ADMIN_SCOPE}),
    "GetReplicas": frozenset({SCALE_SCOPE, ADMIN_SCOPE}),
    "GetLogs": frozenset({ADMIN_SCOPE}),
}
