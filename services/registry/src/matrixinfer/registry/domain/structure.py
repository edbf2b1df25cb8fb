"""Structural checks of a manifest document against its protobuf message.

protobuf's own JSON parser stops at the first problem and words paths its own way; this
walk names every wrong field with a path a user can find in the YAML
(``spec.rules[1].targets[0].weight``) and refuses what the JSON mapping would quietly
accept: booleans as numbers, numbers as strings, NUL bytes, huge strings, NaN.
"""

from __future__ import annotations

import math
import re
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from matrixinfer.core.errors import ViolationCollector

MAX_STRING_CHARS = 4096
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
}
_FLOATS = (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT)


def _shown(key: object) -> str:
    text = str(key)
    return repr(text[:64]) if not text.isprintable() or len(text) > 64 else text


def check_message(
    value: Any, descriptor: Descriptor, path: str, errors: ViolationCollector
) -> None:
    if not isinstance(value, dict):
        errors.add(path, f"must be a mapping, not {type(value).__name__}")
        return
    fields = {f.json_name: f for f in descriptor.fields}
    by_proto_name = {f.name: f for f in descriptor.fields}
    oneofs_seen: dict[str, str] = {}
    for key, item in value.items():
        field = fields.get(key) if isinstance(key, str) else None
        sub = f"{path}.{key}" if path else str(key)
        if field is None:
            hint = ""
            if isinstance(key, str) and key in by_proto_name:
                hint = f"; did you mean {by_proto_name[key].json_name!r}?"
            errors.add(
                f"{path}.{_shown(key)}" if path else _shown(key), f"unknown field{hint}"
            )
            continue
        oneof = field.containing_oneof
        if oneof is not None and not oneof.name.startswith("_"):
            if oneof.name in oneofs_seen:
                errors.add(
                    sub,
                    f"only one of {oneofs_seen[oneof.name]!r} and {key!r} may be set",
                )
                continue
            oneofs_seen[oneof.name] = key
        if item is None:
            continue  # null means "not set", as in protobuf's JSON mapping
        check_field(item, field, sub, errors)


def check_field(
    value: Any, field: FieldDescriptor, path: str, errors: ViolationCollector
) -> None:
    message_type = field.message_type
    if message_type is not None and message_type.GetOptions().map_entry:
        if not isinstance(value, dict):
            errors.add(path, f"must be a mapping, not {type(value).__name__}")
            return
        value_field = message_type.fields_by_name["value"]
        for key, item in value.items():
            sub = f"{path}[{_shown(key)}]"
            if not isinstance(key, str):
                errors.add(sub, "keys must be strings")
                continue
            _check_string(key, sub, errors)
            check_single(item, value_field, sub, errors)
        return
    if field.is_repeated:
        if not isinstance(value, list):
            errors.add(path, f"must be a list, not {type(value).__name__}")
            return
        for i, item in enumerate(value):
            check_single(item, field, f"{path}[{i}]", errors)
        return
    check_single(value, field, path, errors)


_DECIMAL = re.compile(r"-?[0-9]{1,20}")


def check_single(
    value: Any, field: FieldDescriptor, path: str, errors: ViolationCollector
) -> None:
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        assert field.message_type is not None
        check_message(value, field.message_type, path, errors)
    elif kind == FieldDescriptor.TYPE_STRING:
        if not isinstance(value, str):
            errors.add(
                path, f"must be a string, not {type(value).__name__} (quote the value)"
            )
            return
        _check_string(value, path, errors)
    elif kind == FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, bool):
            errors.add(path, f"must be true or false, not {type(value).__name__}")
    elif kind in _INT_RANGES:
        # proto3's JSON mapping writes 64-bit integers as strings and accepts both
        # forms for every integer: what `get -o yaml` prints applies again.
        if isinstance(value, str) and _DECIMAL.fullmatch(value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            errors.add(path, f"must be an integer, not {type(value).__name__}")
            return
        low, high = _INT_RANGES[kind]
        if not low <= value <= high:
            errors.add(path, f"must be between {low} and {high}")
    elif kind in _FLOATS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            errors.add(path, f"must be a number, not {type(value).__name__}")
        elif isinstance(value, float) and not math.isfinite(value):
            errors.add(path, "must be a finite number")
    else:  # pragma: no cover - the contracts use no other field types
        errors.add(path, "unsupported field type")


def _check_string(value: str, path: str, errors: ViolationCollector) -> None:
    if "\x00" in value:
        errors.add(path, "must not contain NUL bytes")
    elif len(value) > MAX_STRING_CHARS:
        errors.add(path, f"longer than {MAX_STRING_CHARS} characters")


def check_strings(message: Message, path: str, errors: ViolationCollector) -> None:
    """The string rules above, for objects that arrive typed (gRPC) not as text."""
    for field, value in message.ListFields():
        sub = f"{path}.{field.json_name}" if path else field.json_name
        message_type = field.message_type
        if message_type is not None and message_type.GetOptions().map_entry:
            value_is_message = (
                message_type.fields_by_name["value"].message_type is not None
            )
            for key, item in value.items():
                _check_string(key, f"{sub}[{_shown(key)}]", errors)
                if value_is_message:
                    check_strings(item, f"{sub}[{_shown(key)}]", errors)
                elif isinstance(item, str):
                    _check_string(item, f"{sub}[{_shown(key)}]", errors)
        elif field.is_repeated:
            for i, item in enumerate(value):
                if isinstance(item, Message):
                    check_strings(item, f"{sub}[{i}]", errors)
                elif isinstance(item, str):
                    _check_string(item, f"{sub}[{i}]", errors)
        elif isinstance(value, Message):
            check_strings(value, sub, errors)
        elif isinstance(value, str):
            _check_string(value, sub, errors)
        elif isinstance(value, float) and not math.isfinite(value):
            errors.add(sub, "must be a finite number")
