"""Turning resources into text: kubectl-style tables per kind, ages and ``describe``.

Everything here is a pure function of the resource (its protobuf JSON form, a dict)
and ``now``, so golden tests pin the output exactly.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

Obj = dict[str, Any]

#: What render re-exports from :mod:`matrixinfer.api.columns` (the one table of
#: columns the CLI and the registry's Kubernetes surface share). Loaded on first use:
#: importing matrixinfer.api here would load it for every ``--help``.
_SHARED = (
    "COLUMNS",
    "MISSING",
    "Column",
    "age",
    "condition",
    "desired_replicas",
    "get_path",
    "has_status",
    "human_duration",
    "parse_time",
    "ready_text",
)

if TYPE_CHECKING:
    from matrixinfer.api.columns import COLUMNS as COLUMNS
    from matrixinfer.api.columns import MISSING as MISSING
    from matrixinfer.api.columns import Column as Column
    from matrixinfer.api.columns import age as age
    from matrixinfer.api.columns import condition as condition
    from matrixinfer.api.columns import desired_replicas as desired_replicas
    from matrixinfer.api.columns import get_path as get_path
    from matrixinfer.api.columns import has_status as has_status
    from matrixinfer.api.columns import human_duration as human_duration
    from matrixinfer.api.columns import parse_time as parse_time
    from matrixinfer.api.columns import ready_text as ready_text

else:

    def __getattr__(name: str) -> Any:
        if name in _SHARED:
            from matrixinfer.api import columns as shared

            return getattr(shared, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------- tables


def format_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    widths: Sequence[int] | None = None,
) -> list[str]:
    """Left-aligned columns three spaces apart (kubectl's look)."""
    if widths is None:
        widths = column_widths(header, rows)
    return [
        "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]


def column_widths(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[int]:
    return [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]


def columns(kind: str, wide: bool, all_namespaces: bool) -> list[Column]:
    from matrixinfer.api.columns import COLUMNS, meta_of

    base, extra = COLUMNS[kind]
    cols = [*base, *extra] if wide else list(base)
    if all_namespaces:
        cols.insert(
            0, ("NAMESPACE", lambda o, now: str(meta_of(o).get("namespace", "")))
        )
    return cols


def table_rows(
    cols: Sequence[Column], objects: Sequence[Obj], now: datetime.datetime
) -> list[list[str]]:
    return [[fn(o, now) for _, fn in cols] for o in objects]


def table(
    kind: str,
    objects: Sequence[Obj],
    now: datetime.datetime,
    wide: bool = False,
    all_namespaces: bool = False,
) -> str:
    cols = columns(kind, wide, all_namespaces)
    return "\n".join(format_table([h for h, _ in cols], table_rows(cols, objects, now)))


def as_json(objects: Sequence[Obj], single: bool) -> str:
    return json.dumps(objects[0] if single else list(objects), indent=2)


def as_yaml(objects: Sequence[Obj]) -> str:
    import yaml

    return yaml.safe_dump_all(objects, sort_keys=False).rstrip()


# ---------------------------------------------------------------- describe

NO_EVENTS = (
    "<none> (MatrixInfer keeps no events; the Conditions (and a Model's "
    "Revisions) show what changed recently)"
)


def _indent(text: str, by: str = "  ") -> list[str]:
    return [by + line if line else line for line in text.rstrip().splitlines()]


def _mapping(values: dict[str, str] | None) -> str:
    if not values:
        return "<none>"
    return ", ".join(f"{k}={v}" for k, v in sorted(values.items()))


def _block(title: str, value: Any) -> list[str]:
    if not value:
        return [f"{title}:", "  <none>"]
    import yaml

    return [f"{title}:", *_indent(yaml.safe_dump(value, sort_keys=False))]


def describe(
    o: Obj,
    now: datetime.datetime,
    revisions: Sequence[Obj] = (),
    total_revisions: int = 0,
) -> str:
    """Metadata, spec, status, conditions, and per kind: endpoints (ModelInfer) or
    recent revisions (Model, newest first)."""
    from matrixinfer.api.columns import MISSING, age, get_path, meta_of, text_of

    meta = meta_of(o)
    kind = str(o.get("kind", ""))
    created = meta.get("creationTimestamp", "")
    lines = [
        f"Name:         {meta.get('name', '')}",
        f"Namespace:    {meta.get('namespace', '')}",
        f"Kind:         {kind} ({o.get('apiVersion', '')})",
        f"Labels:       {_mapping(meta.get('labels'))}",
        f"Annotations:  {_mapping(meta.get('annotations'))}",
        f"Created:      {created or MISSING} ({age(created, now)} ago)",
        f"Generation:   {meta.get('generation', MISSING)}",
        f"Version:      {meta.get('resourceVersion', MISSING)}",
        f"UID:          {meta.get('uid', MISSING)}",
    ]
    if meta.get("finalizers"):
        lines.append(f"Finalizers:   {', '.join(meta['finalizers'])}")
    if meta.get("deletionTimestamp"):
        lines.append(f"Deleting:     since {meta['deletionTimestamp']}")
    spec = dict(o.get("spec", {}))
    if kind == "ApiKey" and "hash" in spec:
        spec["hash"] = "<hidden>"
    lines += _block("Spec", spec)
    status = {
        k: v
        for k, v in o.get("status", {}).items()
        if k not in ("conditions", "endpoints")
    }
    if kind != "ApiKey" or status:
        lines += _block("Status", status)
    conditions = get_path(o, "status.conditions", [])
    lines.append("Conditions:")
    if conditions:
        rows = [
            [
                c.get("type", ""),
                c.get("status", ""),
                c.get("reason", "") or MISSING,
                c.get("message", "") or MISSING,
                f"{age(c.get('lastTransitionTime'), now)} ago"
                if c.get("lastTransitionTime")
                else MISSING,
            ]
            for c in conditions
        ]
        lines += _indent(
            "\n".join(
                format_table(
                    ("TYPE", "STATUS", "REASON", "MESSAGE", "LAST TRANSITION"), rows
                )
            )
        )
    else:
        lines.append("  <none>")
    if kind == "ModelInfer":
        endpoints = get_path(o, "status.endpoints", [])
        lines.append("Endpoints:")
        if endpoints:
            rows = [
                [
                    e.get("name", "") or MISSING,
                    e.get("address", ""),
                    str(e.get("grpcPort", 0)),
                    str(e.get("httpPort", 0)),
                    str(e.get("metricsPort", 0)),
                    str(e.get("revision", MISSING)),
                    "draining"
                    if e.get("draining")
                    else ("ready" if e.get("ready") else "not ready"),
                    str(e.get("restarts", 0)),
                ]
                for e in endpoints
            ]
            header = (
                "REPLICA", "ADDRESS", "GRPC", "HTTP", "METRICS", "REVISION",
                "STATE", "RESTARTS",
            )  # fmt: skip
            lines += _indent("\n".join(format_table(header, rows)))
        else:
            lines.append("  <none>")
    if kind == "Model":
        shown = len(revisions)
        title = (
            f"Revisions (newest first, {shown} of {total_revisions}):"
            if total_revisions > shown
            else "Revisions (newest first):"
        )
        lines.append(title)
        if revisions:
            rows = [
                [
                    str(r.get("revision", "")),
                    text_of(get_path(r, "model.spec.modelSpec.version")),
                    text_of(get_path(r, "model.spec.modelSpec.source.uri")),
                    f"{age(r.get('created'), now)} ago",
                ]
                for r in revisions
            ]
            lines += _indent(
                "\n".join(
                    format_table(("REVISION", "VERSION", "SOURCE", "CREATED"), rows)
                )
            )
        else:
            lines.append("  <none>")
    lines.append(f"Events:       {NO_EVENTS}")
    return "\n".join(lines)
