"""Triton's generate mapping as the gateway's slow path applies it (no server)."""

from __future__ import annotations

import pytest

from matrixinfer.core.errors import InvalidArgument
from matrixinfer.gateway.domain.generate import (
    event,
    fitted_shape,
    generate_request,
    generate_response,
    with_parameters,
)
from matrixinfer.gateway.http.rest import build_infer_request
from matrixinfer.triton.protocol import service_pb2

INPUTS = {"text_input": ("BYTES", [1]), "ids": ("INT32", [-1, -1, 2])}


@pytest.mark.parametrize(
    ("shape", "count", "fitted"),
    [
        ([1], 1, [1]),
        ([-1], 5, [5]),
        ([-1, 4], 8, [2, 4]),
        ([-1, -1, 2], 6, [1, 3, 2]),
        ([-1, 4], 6, None),
        ([1], 2, None),
    ],
)
def test_variable_dimensions_take_what_the_fixed_ones_leave(
    shape: list[int], count: int, fitted: list[int] | None
) -> None:
    assert fitted_shape(shape, count) == fitted


def test_inputs_become_tensors_and_every_other_key_a_parameter() -> None:
    body = {
        "text_input": "hello",
        "ids": [1, 2, 3, 4],
        "temperature": 0.5,
        "parameters": {"stream": True, "max_tokens": 3, "tag": "x", "ids": [7, 8]},
    }
    document, parameters = generate_request("m", body, INPUTS)
    text = {"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["hello"]}
    ids = {"name": "ids", "datatype": "INT32", "shape": [1, 2, 2], "data": [1, 2, 3, 4]}
    # An input named inside "parameters" is a tensor too (Triton's mapping).
    seven = {"name": "ids", "datatype": "INT32", "shape": [1, 1, 2], "data": [7, 8]}
    assert document == {"inputs": [text, ids, seven]}
    request, _ = build_infer_request("m", "", document, b"")
    with_parameters(request, parameters)
    assert request.parameters["temperature"].double_param == 0.5
    assert request.parameters["stream"].bool_param is True
    assert request.parameters["max_tokens"].int64_param == 3
    assert request.parameters["tag"].string_param == "x"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text_input": ["a", "b"]}, "text_input"),
        ({"text_input": [["a"]]}, "text_input"),
        ({"ids": [1, 2, 3]}, "ids"),
        ({"text_input": "a", "parameters": []}, "parameters"),
        ({"text_input": "a", "parameters": {"p": [1]}}, "parameters.p"),
        ({"text_input": "a", "seed": {"x": 1}}, "seed"),
    ],
)
def test_bad_bodies_are_refused_naming_the_key(
    body: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        document, parameters = generate_request("m", body, INPUTS)
        request, _ = build_infer_request("m", "", document, b"")
        with_parameters(request, parameters)
    assert [v.field for v in raised.value.violations] == [field]


def test_a_body_naming_no_input_says_which_inputs_exist() -> None:
    with pytest.raises(
        InvalidArgument, match=r"none of model 'm''s inputs \(ids, text_input\)"
    ):
        generate_request("m", {"text": "a"}, INPUTS)
    with pytest.raises(InvalidArgument, match="must be a JSON object"):
        generate_request("m", ["a"], INPUTS)


def test_a_response_is_its_outputs_by_name_without_the_streams_bookkeeping() -> None:
    response = service_pb2.ModelInferResponse(model_name="m", model_version="1", id="r")
    response.parameters["triton_final_response"].bool_param = False
    response.parameters["score"].double_param = 0.25
    document = generate_response(response, {"text_output": ["hi"], "ids": [1, 2]})
    assert document == {
        "model_name": "m",
        "model_version": "1",
        "id": "r",
        "score": 0.25,
        "text_output": "hi",
        "ids": [1, 2],
    }
    assert event({"a": 1}) == b'data: {"a":1}\n\n'
