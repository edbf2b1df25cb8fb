"""Strict JSON for request bodies (the gateway's KServe v2 REST and transcoded
routes): duplicate keys, NaN/Infinity and deep nesting are refused with
INVALID_ARGUMENT (HTTP 400), never parsed into something ambiguous or left to blow
the parser's recursion."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from matrixinfer.core.errors import InvalidArgument

MAX_JSON_DEPTH = 64
# Protobuf field types that its JSON mapping writes as strings (64-bit integers).
INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InvalidArgument.field(key, "duplicate JSON key")
        out[key] = value
    return out


def _reject_constant(value: str) -> Any:
    raise InvalidArgument(f"{value} is not valid JSON")


def parse_json(raw: bytes) -> Any:
    """Strict JSON: no duplicate keys, no NaN, bounded nesting."""
    depth = 0
    for byte in raw:  # refuse deep nesting before the recursive parser sees it
        if byte in (0x5B, 0x7B):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise InvalidArgument(
                    f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
                )
        elif byte in (0x5D, 0x7D):
            depth -= 1
    try:
        return json.loads(
            raw, object_pairs_hook=_strict_object, parse_constant=_reject_constant
        )
    except InvalidArgument:
        raise
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"the request body is not valid JSON: {e}") from None
