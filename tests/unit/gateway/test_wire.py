"""The gateway reads and renames models in raw KServe v2 messages."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from matrixinfer.core.errors import InvalidArgument
from matrixinfer.gateway.domain.wire import peek_model, with_model


def infer_request(name: str, version: str = "", payload: bytes = b"\x00" * 64) -> bytes:
    request = service_pb2.ModelInferRequest(
        model_name=name, model_version=version, id="r1"
    )
    tensor = request.inputs.add(name="X", datatype="FP32", shape=[1, 16])
    tensor.parameters["p"].int64_param = 7
    request.raw_input_contents.append(payload)
    raw: bytes = request.SerializeToString()
    return raw


def test_peek_reads_name_and_version() -> None:
    assert peek_model(infer_request("iris", "3")) == ("iris", "3")
    assert peek_model(service_pb2.ModelReadyRequest(name="m").SerializeToString()) == (
        "m",
        "",
    )


def test_rename_keeps_everything_else() -> None:
    raw = infer_request("public", "", payload=bytes(range(256)))
    renamed = with_model(raw, name="internal", version="2")
    parsed = service_pb2.ModelInferRequest.FromString(renamed)
    original = service_pb2.ModelInferRequest.FromString(raw)
    assert (parsed.model_name, parsed.model_version) == ("internal", "2")
    original.model_name, original.model_version = "internal", "2"
    assert parsed == original
    assert peek_model(renamed) == ("internal", "2")


@given(
    name=st.text(min_size=1, max_size=40),
    version=st.text(alphabet="0123456789", max_size=5),
    payload=st.binary(max_size=300),
)
def test_peek_agrees_with_protobuf(name: str, version: str, payload: bytes) -> None:
    raw = infer_request(name, version, payload)
    assert peek_model(raw) == (name, version)


@pytest.mark.parametrize(
    "raw",
    [
        b"\x0a\x05ab",  # length past the end
        b"\x0a",  # truncated length
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",  # endless varint
        b"\x0b",  # wire type 3 (groups): never in these messages
        b"\x0a\x02\xff\xfe",  # not UTF-8
        b"\x0a\x80\x04" + b"a" * 512,  # a 512-byte model name
    ],
)
def test_malformed_messages_are_invalid_argument(raw: bytes) -> None:
    with pytest.raises(InvalidArgument):
        peek_model(raw)
