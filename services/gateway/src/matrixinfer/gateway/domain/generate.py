"""Triton's REST generate extension (``/generate``, ``/generate_stream``) as the
gateway's slow path carries it: the JSON body becomes one ModelStreamInfer request,
each response a JSON object (one, or server-sent events).

The mapping is Triton's own (its generate extension): a key naming one of the
model's inputs, at the top or inside ``parameters``, is that tensor (a value or a
flat list; the shape is the input's, its variable dimensions filled in), every
other key a request parameter; a response is ``model_name``, ``model_version`` and
each output by name, a one-element output as a plain value.
"""

from __future__ import annotations

import json
import math
from typing import Any

from matrixinfer.core.errors import InvalidArgument
from matrixinfer.triton.protocol import service_pb2

#: Content type of /generate_stream's answer.
EVENT_STREAM = "text/event-stream; charset=utf-8"


def fitted_shape(shape: list[int], count: int) -> list[int] | None:
    """``shape`` (-1 for variable dimensions) holding ``count`` elements: fixed
    dimensions divide it, the innermost variable one takes the rest, other variable
    ones are 1; None when ``count`` does not fit."""
    fixed = math.prod(d for d in shape if d != -1)
    if fixed == 0 or count % fixed:
        return None
    rest = count // fixed
    out = list(shape)
    for i in reversed(range(len(out))):
        if out[i] == -1:
            out[i], rest = rest, 1
    return out if rest == 1 else None


def _parameter(target: service_pb2.InferParameter, value: Any, path: str) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    elif isinstance(value, str):
        target.string_param = value
    else:
        raise InvalidArgument.field(path, "must be a string, number or boolean")


def generate_request(
    model: str,
    body: Any,
    inputs: dict[str, tuple[str, list[int]]],
) -> tuple[dict[str, Any], dict[str, tuple[Any, str]]]:
    """The KServe v2 JSON infer body for a generate ``body``, given the model's
    inputs (name → datatype, shape), and the request parameters it names (name →
    value and where the body has it)."""
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object")
    tensors: list[dict[str, Any]] = []
    parameters: dict[str, Any] = {}
    nested = body.get("parameters", {})
    if not isinstance(nested, dict):
        raise InvalidArgument.field("parameters", "must be an object")
    entries = [(k, v, k) for k, v in body.items() if k != "parameters"]
    entries += [(k, v, f"parameters.{k}") for k, v in nested.items()]
    for key, value, path in entries:
        if key not in inputs:
            parameters[key] = (value, path)
            continue
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, list | dict) for v in values):
            raise InvalidArgument.field(path, "must be a value or a flat list")
        datatype, shape = inputs[key]
        fitted = fitted_shape(shape, len(values))
        if fitted is None:
            raise InvalidArgument.field(
                path, f"{len(values)} value(s) do not fit the input's shape {shape}"
            )
        tensors.append(
            {"name": key, "datatype": datatype, "shape": fitted, "data": values}
        )
    if not tensors:
        raise InvalidArgument(
            f"the body names none of model {model!r}'s inputs "
            f"({', '.join(sorted(inputs))})"
        )
    return {"inputs": tensors}, parameters


def with_parameters(
    request: service_pb2.ModelInferRequest, parameters: dict[str, tuple[Any, str]]
) -> None:
    """Set each (value, path) of :func:`generate_request` as a request parameter."""
    for name, (value, path) in parameters.items():
        _parameter(request.parameters[name], value, path)


def generate_response(
    response: service_pb2.ModelInferResponse, outputs: dict[str, list[Any]]
) -> dict[str, Any]:
    """One generate answer: ``outputs`` are the response's decoded tensors."""
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    if response.id:
        document["id"] = response.id
    for name, parameter in response.parameters.items():
        which = parameter.WhichOneof("parameter_choice")
        # triton_final_response and the like are the gRPC stream's bookkeeping.
        if which is not None and not name.startswith("triton_"):
            document[name] = getattr(parameter, which)
    for name, values in outputs.items():
        document[name] = values[0] if len(values) == 1 else values
    return document


def event(document: dict[str, Any]) -> bytes:
    """One server-sent event carrying ``document``."""
    return b"data: " + json.dumps(document, separators=(",", ":")).encode() + b"\n\n"
