"""Who may call the autoscaler (docs/security.md, "Control-plane authorization").

Only the gateways: their load reports and Activate for a model at zero. Any other
service certificate is refused PERMISSION_DENIED; an admin may call both.
"""

from __future__ import annotations

from matrixinfer.core.scopes import ADMIN_SCOPE, LOAD_SCOPE

#: Method → the scopes any one of which lets a caller call it.
POLICY: dict[str, frozenset[str]] = {
    "ReportLoad": frozenset({LOAD_SCOPE, ADMIN_SCOPE}),
    "Activate": frozenset({LOAD_SCOPE, ADMIN_SCOPE}),
}
