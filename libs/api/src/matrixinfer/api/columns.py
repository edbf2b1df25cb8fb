"""The columns every table of resources shows: the CLI's ``get`` and the
registry's Kubernetes Table answers (``kubectl get``) read this one table, so both
show the same columns with the same values.

Each column is a pure function of the resource (its protobuf JSON form, a dict) and
``now``. Plain Python only: the CLI imports this lazily and keeps ``--help`` light.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

Obj = dict[str, Any]
Column = tuple[str, Callable[[Obj, datetime.datetime], str]]
MISSING = "-"


# ---------------------------------------------------------------- time


def parse_time(value: str) -> datetime.datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed


def human_duration(seconds: float) -> str:
    """kubectl's HumanDuration: 45s, 5m30s, 45m, 3h20m, 36h, 3d5h, 15d, 2y30d."""
    if seconds < -1:
        return "<invalid>"
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rest = s % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h" if rest == 0 else f"{hours}h{rest}m"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        rest = hours % 24
        return f"{days}d" if rest == 0 else f"{days}d{rest}h"
    if days < 365 * 2:
        return f"{days}d"
    years = days // 365
    if days < 365 * 8:
        rest = days % 365
        return f"{years}y" if rest == 0 else f"{years}y{rest}d"
    return f"{years}y"


def age(value: str | None, now: datetime.datetime) -> str:
    when = parse_time(value or "")
    if when is None:
        return MISSING
    return human_duration((now - when).total_seconds())


# ---------------------------------------------------------------- tables


def meta_of(o: Obj) -> Obj:
    meta: Obj = o.get("metadata", {})
    return meta


def _name(o: Obj, now: datetime.datetime) -> str:
    return str(meta_of(o).get("name", ""))


def _age(o: Obj, now: datetime.datetime) -> str:
    return age(meta_of(o).get("creationTimestamp"), now)


def get_path(o: Obj, path: str, default: Any = None) -> Any:
    value: Any = o
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return default
        value = value[part]
    return value


def text_of(value: Any) -> str:
    if value is None or value == "" or value == []:
        return MISSING
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _field(path: str, default: Any = None) -> Callable[[Obj, datetime.datetime], str]:
    return lambda o, now: text_of(get_path(o, path, default))


def condition(o: Obj, kind: str) -> Obj | None:
    for c in get_path(o, "status.conditions", []):
        if c.get("type") == kind:
            found: Obj = c
            return found
    return None


def has_status(o: Obj) -> bool:
    return bool(get_path(o, "status.observedGeneration")) or bool(
        get_path(o, "status.conditions")
    )


def desired_replicas(o: Obj) -> int:
    """What the controller wants (status), or the spec before it has spoken."""
    if has_status(o):
        return int(get_path(o, "status.desiredReplicas", 0))
    return int(get_path(o, "spec.replicas", 1))


def ready_text(o: Obj) -> str:
    return f"{get_path(o, 'status.readyReplicas', 0)}/{desired_replicas(o)}"


def _model_ref(o: Obj, now: datetime.datetime) -> str:
    name = str(get_path(o, "spec.modelRef.name", ""))
    revision = get_path(o, "spec.modelRef.revision")
    return f"{name}@{revision}" if revision else text_of(name)


def _ready(o: Obj, now: datetime.datetime) -> str:
    return ready_text(o)


def _available(o: Obj, now: datetime.datetime) -> str:
    c = condition(o, "Available")
    return text_of(c.get("status") if c else None)


def _endpoints(o: Obj, now: datetime.datetime) -> str:
    ready = [
        f"{e.get('address', '')}:{e.get('grpcPort', 0)}"
        for e in get_path(o, "status.endpoints", [])
        if e.get("ready") and not e.get("draining")
    ]
    return ",".join(ready) or MISSING


def _rules(o: Obj, now: datetime.datetime) -> str:
    return str(len(get_path(o, "spec.rules", [])))


def _targets(o: Obj, now: datetime.datetime) -> str:
    targets = [
        f"{t.get('modelServer', '')}({t.get('weight', 100)})"
        for rule in get_path(o, "spec.rules", [])
        for t in rule.get("targets", [])
    ]
    return ",".join(targets) or MISSING


def _rate_limit(o: Obj, now: datetime.datetime) -> str:
    rps = get_path(o, "spec.rateLimit.requestsPerSecond")
    if not rps:
        return MISSING
    per = get_path(o, "spec.rateLimit.per", "route")
    return f"{rps:g}/s per {per}"


def _target_ref(o: Obj, now: datetime.datetime) -> str:
    kind = get_path(o, "spec.targetRef.kind", "ModelInfer")
    return f"{kind}/{get_path(o, 'spec.targetRef.name', '')}"


def _status_int(path: str) -> Callable[[Obj, datetime.datetime], str]:
    def value(o: Obj, now: datetime.datetime) -> str:
        if not get_path(o, "status"):
            return MISSING
        return str(get_path(o, path, 0))

    return value


def _metrics(o: Obj, now: datetime.datetime) -> str:
    return (
        ",".join(
            f"{m.get('type', '')}={m.get('target', 0):g}"
            for m in get_path(o, "spec.metrics", [])
        )
        or MISSING
    )


def _scopes(o: Obj, now: datetime.datetime) -> str:
    return ",".join(get_path(o, "spec.scopes", [])) or MISSING


def _revoked(o: Obj, now: datetime.datetime) -> str:
    return "true" if get_path(o, "spec.revoked") else "false"


def _expires(o: Obj, now: datetime.datetime) -> str:
    return (
        text_of(get_path(o, "spec.expiresAt"))
        if get_path(o, "spec.expiresAt")
        else "never"
    )


def _ready_endpoints(o: Obj, now: datetime.datetime) -> str:
    return (
        str(get_path(o, "status.readyEndpoints", 0))
        if get_path(o, "status")
        else MISSING
    )


#: kind → (default columns, extra columns of -o wide)
COLUMNS: dict[str, tuple[list[Column], list[Column]]] = {
    "Model": (
        [
            ("NAME", _name),
            ("FORMAT", _field("spec.modelSpec.framework")),
            ("REVISION", _field("status.currentRevision")),
            ("AGE", _age),
        ],
        [
            ("MODEL-ID", _field("spec.modelSpec.modelId")),
            ("VERSION", _field("spec.modelSpec.version")),
            ("SOURCE", _field("spec.modelSpec.source.uri")),
        ],
    ),
    "ModelInfer": (
        [
            ("NAME", _name),
            ("MODEL", _model_ref),
            ("READY", _ready),
            ("REVISION", _field("status.modelRevision")),
            ("AGE", _age),
        ],
        [
            ("UP-TO-DATE", _status_int("status.updatedReplicas")),
            ("AVAILABLE", _available),
            ("ENDPOINTS", _endpoints),
        ],
    ),
    "ModelServer": (
        [
            ("NAME", _name),
            ("MODELINFER", _field("spec.modelInferRef")),
            ("MODEL", _field("spec.model")),
            ("ENDPOINTS", _ready_endpoints),
            ("AGE", _age),
        ],
        [
            ("PROTOCOL", _field("spec.protocol")),
            ("BALANCER", _field("spec.trafficPolicy.loadBalancer.type")),
        ],
    ),
    "ModelRoute": (
        [("NAME", _name), ("RULES", _rules), ("AGE", _age)],
        [
            ("MODEL", _field("spec.modelName")),
            ("TARGETS", _targets),
            ("RATE-LIMIT", _rate_limit),
        ],
    ),
    "AutoscalingPolicy": (
        [
            ("NAME", _name),
            ("TARGET", _target_ref),
            ("MIN", _field("spec.minReplicas", 0)),
            ("MAX", _field("spec.maxReplicas", 0)),
            ("CURRENT", _status_int("status.currentReplicas")),
            ("DESIRED", _status_int("status.desiredReplicas")),
            ("MODE", _field("status.mode")),
        ],
        [("METRICS", _metrics), ("AGE", _age)],
    ),
    "ApiKey": (
        [
            ("NAME", _name),
            ("SUBJECT", _field("spec.subject")),
            ("SCOPES", _scopes),
            ("REVOKED", _revoked),
        ],
        [
            ("TENANT", _field("spec.tenant")),
            ("EXPIRES", _expires),
            ("AGE", _age),
        ],
    ),
}
