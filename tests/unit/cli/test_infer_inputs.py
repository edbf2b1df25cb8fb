"""How `matrixinfer infer` turns --input/--npy/--data into KServe v2 tensors."""

from __future__ import annotations

import pathlib
import re

import click
import numpy as np
import pytest

from matrixinfer.cli.infer import (
    build_tensors,
    decode_binary,
    outputs_table,
    split_assignment,
    tensors_from_body,
)

IRIS = {
    "name": "iris",
    "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
}


def test_json_input_takes_the_models_datatype() -> None:
    (tensor,) = build_tensors(IRIS, [("X", "[[5.1,3.5,1.4,0.2],[6.7,3,5.2,2.3]]")], [])
    assert tensor.datatype == "FP32"
    assert tensor.array.dtype == np.float32
    assert tensor.as_json()["shape"] == [2, 4]
    assert len(tensor.raw()) == 2 * 4 * 4


def test_a_single_row_gets_the_batch_dimension() -> None:
    (tensor,) = build_tensors(IRIS, [("X", "[5.1,3.5,1.4,0.2]")], [])
    assert tensor.as_json()["shape"] == [1, 4]


def test_npy_files(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.array([[6.7, 3.0, 5.2, 2.3]], dtype=np.float64))
    (tensor,) = build_tensors(IRIS, [], [("X", str(path))])
    assert tensor.array.dtype == np.float32
    assert tensor.as_json()["data"] == pytest.approx([6.7, 3.0, 5.2, 2.3])


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([("Y", "[1]")], "has no input 'Y'; its inputs: X (FP32)"),
        ([("X", "[1,2")], "not JSON"),
        ([("X", '[["a","b","c","d"]]')], "not FP32 values"),
        ([("X", "[[1,2,3]]")], "does not fit the model's [-1, 4]"),
    ],
)
def test_bad_inputs_are_usage_errors(
    inputs: list[tuple[str, str]], message: str
) -> None:
    with pytest.raises(click.UsageError, match=re.escape(message)):
        build_tensors(IRIS, inputs, [])


def test_assignment_needs_a_name() -> None:
    assert split_assignment("X=[1,2]", "--input") == ("X", "[1,2]")
    with pytest.raises(click.UsageError, match="NAME=VALUE"):
        split_assignment("[1,2]", "--input")


def test_a_kserve_body_becomes_tensors_for_grpc() -> None:
    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 4],
                        "data": [1, 2, 3, 4]}]}  # fmt: skip
    (tensor,) = tensors_from_body(body)
    assert tensor.array.shape == (1, 4)
    with pytest.raises(click.UsageError, match="needs 4"):
        tensors_from_body({"inputs": [{**body["inputs"][0], "data": [1]}]})


def test_binary_outputs_are_decoded_and_shown() -> None:
    raw = np.array([0, 2], dtype=np.int64).tobytes()
    header = {"outputs": [{"name": "label", "datatype": "INT64", "shape": [2],
                           "parameters": {"binary_data_size": len(raw)}}]}  # fmt: skip
    response = decode_binary(header, raw)
    assert response["outputs"][0]["data"] == [0, 2]
    assert outputs_table(response).splitlines() == [
        "OUTPUT   DATATYPE   SHAPE   DATA",
        "label    INT64      [2]     [0, 2]",
    ]
