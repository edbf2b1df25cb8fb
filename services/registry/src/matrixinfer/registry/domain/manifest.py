"""Turning manifest text (YAML or JSON, one or many documents) into plain dicts.

Hostile text is expected here: duplicate keys, YAML aliases (billion laughs), very deep
nesting and huge documents are refused with a clear error instead of being silently
merged, expanded or allowed to exhaust the process.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from matrixinfer.core.errors import InvalidArgument

MAX_MANIFEST_BYTES = 1 << 20
MAX_DOCUMENTS = 500
MAX_DEPTH = 32


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and duplicate keys."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.MarkedYAMLError(
                None, None, "aliases (*name) are not allowed", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, list | dict):
                raise yaml.MarkedYAMLError(
                    None, None, "mapping keys must be scalars", key_node.start_mark
                )
            if key in seen:
                raise yaml.MarkedYAMLError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# Timestamps stay strings: a manifest never means a Python datetime.
_StrictLoader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag != "tag:yaml.org,2002:timestamp"
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _reject_constant(value: str) -> Any:
    raise ValueError(f"{value} is not allowed")


def _depth(value: Any, limit: int) -> int:
    """Depth of nesting, iteratively (recursion would be the attack surface)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    deepest = 0
    while stack:
        item, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, d + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, d + 1) for v in item)
    return deepest


def parse_manifest(text: str) -> list[dict[str, Any]]:
    """Parse one or many documents; empty YAML documents are skipped."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_MANIFEST_BYTES:
        raise InvalidArgument.field(
            "manifest", f"larger than {MAX_MANIFEST_BYTES} bytes; split it"
        )
    if "\x00" in text:
        raise InvalidArgument.field("manifest", "contains a NUL byte")
    stripped = text.lstrip()
    docs: list[Any]
    try:
        if stripped.startswith(("{", "[")):
            loaded = json.loads(
                text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant
            )
            docs = loaded if isinstance(loaded, list) else [loaded]
        else:
            docs = [
                d for d in yaml.load_all(text, Loader=_StrictLoader) if d is not None
            ]
    except RecursionError:
        raise InvalidArgument.field(
            "manifest", f"nested deeper than {MAX_DEPTH} levels"
        ) from None
    except (yaml.YAMLError, ValueError) as e:
        raise InvalidArgument.field("manifest", f"not valid YAML or JSON: {e}") from e
    if not docs:
        raise InvalidArgument.field("manifest", "no documents")
    if len(docs) > MAX_DOCUMENTS:
        raise InvalidArgument.field(
            "manifest", f"more than {MAX_DOCUMENTS} documents; split it"
        )
    out: list[dict[str, Any]] = []
    for i, doc in enumerate(docs):
        where = f"manifest[{i}]" if len(docs) > 1 else "manifest"
        if not isinstance(doc, dict):
            raise InvalidArgument.field(
                where, f"a document must be a mapping, not {type(doc).__name__}"
            )
        if _depth(doc, MAX_DEPTH) > MAX_DEPTH:
            raise InvalidArgument.field(where, f"nested deeper than {MAX_DEPTH} levels")
        out.append(doc)
    return out
