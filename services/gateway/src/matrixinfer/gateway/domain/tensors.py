"""Is a request's tensor data what its shapes say? Triton (the version the pytriton
wheel carries) hands a short raw buffer to the model as if it were whole and answers
a negative dimension with INTERNAL, so the gateway refuses both as INVALID_ARGUMENT
naming the input. HAProxy applies the same rules on the fast path
(``adapters/dataplane/matrixinfer.lua``, which also checks REST's binary tensor
data); this module guards the gRPC requests the gateway's Python carries (its REST
handler checks sizes while it converts a body to gRPC). Keep the two in step:
tests/integration/gateway/test_bad_tensors.py sends every case down both paths.

Each check returns ``None`` (let Triton decide) or the error message.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from google.protobuf.message import DecodeError

from matrixinfer.triton.protocol import service_pb2

#: Bytes per element of each fixed-size KServe v2 datatype.
SIZES = {
    "BOOL": 1,
    "UINT8": 1,
    "INT8": 1,
    "UINT16": 2,
    "INT16": 2,
    "FP16": 2,
    "BF16": 2,
    "UINT32": 4,
    "INT32": 4,
    "FP32": 4,
    "UINT64": 8,
    "INT64": 8,
    "FP64": 8,
}
MAX_ELEMENTS = 1 << 40
_CONTENTS = (
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint_contents",
    "uint64_contents",
    "fp32_contents",
    "fp64_contents",
    "bytes_contents",
)


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def elements(name: str, shape: Sequence[int]) -> int | str:
    """The number of elements ``shape`` holds, or the error message."""
    if any(d < 0 for d in shape):
        return f"input '{name}': shape {_shape_text(shape)} has a negative dimension"
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        return f"input '{name}': shape {_shape_text(shape)} is too large"
    return count


def _bytes_elements(raw: bytes) -> int | None:
    count, pos = 0, 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            return None
        pos += 4 + int.from_bytes(raw[pos : pos + 4], "little")
        count += 1
    return count if pos == len(raw) else None


def check_infer_request(message: bytes) -> str | None:
    """A serialized ``ModelInferRequest`` (without the gRPC prefix)."""
    try:
        request = service_pb2.ModelInferRequest.FromString(message)
    except DecodeError:
        return None  # Triton answers what it cannot parse
    counts: list[int] = []
    for tensor in request.inputs:
        count = elements(tensor.name, tensor.shape)
        if isinstance(count, str):
            return count
        counts.append(count)
    # Shared memory and other per-input parameters: Triton decides.
    if any(len(tensor.parameters) for tensor in request.inputs):
        return None
    raws = request.raw_input_contents
    if raws:
        if len(raws) != len(request.inputs):
            return f"{len(raws)} raw_input_contents for {len(request.inputs)} inputs"
        for tensor, count, raw in zip(request.inputs, counts, raws, strict=True):
            width = SIZES.get(tensor.datatype)
            if width is not None and len(raw) != count * width:
                return (
                    f"input '{tensor.name}': {len(raw)} bytes of raw data for shape "
                    f"{_shape_text(tensor.shape)} {tensor.datatype}, expected "
                    f"{count * width}"
                )
            if tensor.datatype == "BYTES" and _bytes_elements(raw) != count:
                return (
                    f"input '{tensor.name}': raw BYTES data does not hold {count} "
                    f"elements for shape {_shape_text(tensor.shape)}"
                )
        return None
    for tensor, count in zip(request.inputs, counts, strict=True):
        if not tensor.HasField("contents"):
            return f"input '{tensor.name}' has no data"
        held = sum(len(getattr(tensor.contents, f)) for f in _CONTENTS)
        if held != count:
            return (
                f"input '{tensor.name}': {held} {tensor.datatype} values for shape "
                f"{_shape_text(tensor.shape)}, expected {count}"
            )
    return None
