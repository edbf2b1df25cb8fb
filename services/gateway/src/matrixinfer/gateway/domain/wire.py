"""Reading and rewriting the model name of a KServe v2 request without decoding it.

Every model-scoped request of ``inference.GRPCInferenceService`` carries the model
name in field 1 and the version in field 2 (both strings). The gateway forwards
requests as raw bytes (decoding tensors would cost more than the whole proxy
budget), so it reads just those two fields from the wire format, and renames a model
by *appending* a new field 1: protobuf parsers keep the last value of a non-repeated
field, so the rest of the message is never copied or re-encoded.
"""

from __future__ import annotations

from matrixinfer.core.errors import InvalidArgument

_MAX_NAME_BYTES = 256


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise InvalidArgument("malformed protobuf message")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def peek_model(data: bytes) -> tuple[str, str]:
    """(model name, version) of a serialized request; the last occurrence wins, as in
    protobuf. Walks the whole message once but copies only the two strings."""
    name = version = b""
    pos = 0
    end = len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = _varint(data, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == 2:
            length, pos = _varint(data, pos)
            if pos + length > end:
                raise InvalidArgument("malformed protobuf message")
            if field in (1, 2):
                if length > _MAX_NAME_BYTES:
                    raise InvalidArgument.field(
                        "model_name" if field == 1 else "model_version", "too long"
                    )
                if field == 1:
                    name = data[pos : pos + length]
                else:
                    version = data[pos : pos + length]
            pos += length
        else:
            raise InvalidArgument("malformed protobuf message")
        if pos > end:
            raise InvalidArgument("malformed protobuf message")
    try:
        return name.decode(), version.decode()
    except UnicodeDecodeError:
        raise InvalidArgument.field("model_name", "not valid UTF-8") from None


def _string_field(field: int, value: str) -> bytes:
    raw = value.encode()
    return _encode_varint(field << 3 | 2) + _encode_varint(len(raw)) + raw


def with_model(
    data: bytes, name: str | None = None, version: str | None = None
) -> bytes:
    """``data`` with its model name and/or version replaced (appended; last wins)."""
    suffix = b""
    if name is not None:
        suffix += _string_field(1, name)
    if version is not None:
        suffix += _string_field(2, version)
    return data + suffix if suffix else data


def with_priority(data: bytes, level: int) -> bytes:
    """``data`` (a ModelInferRequest) with Triton's ``priority`` parameter set to
    ``level``: a ``parameters`` map entry appended, which replaces the request's own
    (the last map entry wins)."""
    value = _encode_varint(5 << 3) + _encode_varint(level)  # uint64_param
    entry = _string_field(1, "priority") + _encode_varint(2 << 3 | 2)
    entry += _encode_varint(len(value)) + value
    return data + _encode_varint(4 << 3 | 2) + _encode_varint(len(entry)) + entry
