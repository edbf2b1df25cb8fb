"""The Kubernetes versions everything this project sends to a cluster is checked
against, offline (kubernetes-validate, strict: unknown fields are errors): the oldest
the README supports (gRPC probes are GA from 1.27), a current one, and the newest the
package ships. deploy/k8s and the objects the controller's kubernetes runtime creates
are validated against the same list."""

from __future__ import annotations

from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]

KUBERNETES_VERSIONS: tuple[str, ...] = tuple(
    dict.fromkeys(("1.27", "1.32", kubernetes_validate.latest_version()))
)


def validate_strict(obj: dict[str, Any]) -> None:
    """Raise when ``obj`` does not match the schema of every supported version."""
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)
