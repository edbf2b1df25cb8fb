"""``matrixinfer infer``: one inference call through the gateway, over KServe v2 REST
(default) or gRPC (``--grpc``; the KServe v2 messages tritonclient ships, through
matrixinfer.triton).

numpy and gRPC are imported inside the functions that use them: every command (and
``--help``) imports this module."""

from __future__ import annotations

import json
import math
import pathlib
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from matrixinfer.cli import render
from matrixinfer.cli.client import (
    App,
    CliError,
    auth_metadata,
    http_error,
    rpc_error,
)

if TYPE_CHECKING:
    import numpy as np

#: KServe v2 datatype → the numpy dtype (by name) of its values.
DTYPES: dict[str, str] = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32",
    "UINT64": "uint64", "INT8": "int8", "INT16": "int16", "INT32": "int32",
    "INT64": "int64", "FP16": "float16", "FP32": "float32", "FP64": "float64",
    "BYTES": "object",
}  # fmt: skip
MAX_SHOWN = 200
pass_app = click.make_pass_decorator(App)


@dataclass
class Tensor:
    name: str
    datatype: str
    array: np.ndarray[Any, Any]

    def as_json(self) -> dict[str, Any]:
        data = self.array.reshape(-1).tolist()
        if self.datatype == "BYTES":
            data = [v.decode() if isinstance(v, bytes) else str(v) for v in data]
        return {
            "name": self.name,
            "shape": list(self.array.shape),
            "datatype": self.datatype,
            "data": data,
        }

    def raw(self) -> bytes:
        if self.datatype != "BYTES":
            return bytes(self.array.tobytes())
        out = bytearray()
        for value in self.array.reshape(-1).tolist():
            data = value if isinstance(value, bytes) else str(value).encode()
            out += struct.pack("<I", len(data)) + data
        return bytes(out)


def split_assignment(value: str, option: str) -> tuple[str, str]:
    name, sep, rest = value.partition("=")
    if not sep or not name:
        raise click.UsageError(f"{option} {value!r}: expected NAME=VALUE")
    return name, rest


def _to_array(value: Any, datatype: str, where: str) -> np.ndarray[Any, Any]:
    import numpy as np

    try:
        array = np.asarray(value, dtype=DTYPES[datatype])
    except (TypeError, ValueError, OverflowError) as e:
        raise click.UsageError(f"{where}: not {datatype} values: {e}") from e
    if array.ndim == 0:
        array = array.reshape(1)
    return array


def _fit_shape(
    array: np.ndarray[Any, Any], shape: Sequence[int], where: str
) -> np.ndarray[Any, Any]:
    """Add the batch dimension a batching model wants ([-1, 4] given [4] values)."""
    if shape and array.ndim == len(shape) - 1 and shape[0] == -1:
        array = array.reshape(1, *array.shape)
    if len(shape) == array.ndim and any(
        want not in (-1, got) for want, got in zip(shape, array.shape, strict=True)
    ):
        raise click.UsageError(
            f"{where}: shape {list(array.shape)} does not fit the model's {list(shape)}"
        )
    return array


def build_tensors(
    metadata: dict[str, Any],
    inputs: Sequence[tuple[str, str]],
    npys: Sequence[tuple[str, str]],
) -> list[Tensor]:
    """Tensors from --input NAME=JSON and --npy NAME=path, typed and shaped by the
    model's metadata."""
    known = {i["name"]: i for i in metadata.get("inputs", [])}
    tensors: list[Tensor] = []
    for option, name, value in [
        *(("--input", n, v) for n, v in inputs),
        *(("--npy", n, v) for n, v in npys),
    ]:
        where = f"{option} {name}"
        spec = known.get(name)
        if spec is None:
            raise click.UsageError(
                f"{where}: the model has no input {name!r}; its inputs: "
                + (", ".join(f"{k} ({v.get('datatype')})" for k, v in known.items())
                   or "none")
            )  # fmt: skip
        datatype = str(spec.get("datatype", ""))
        if datatype not in DTYPES:
            raise CliError(f"error: input {name}: unsupported datatype {datatype!r}")
        if option == "--input":
            try:
                parsed = json.loads(value)
            except ValueError as e:
                raise click.UsageError(f"{where}: not JSON: {e}") from e
            array = _to_array(parsed, datatype, where)
        else:
            import numpy as np

            try:
                loaded = np.load(pathlib.Path(value), allow_pickle=False)
            except (OSError, ValueError) as e:
                raise click.UsageError(f"{where}: cannot read {value}: {e}") from e
            array = _to_array(loaded, datatype, where)
        shape = [int(d) for d in spec.get("shape", [])]
        tensors.append(Tensor(name, datatype, _fit_shape(array, shape, where)))
    return tensors


def tensors_from_body(body: Any) -> list[Tensor]:
    """The inputs of a KServe v2 JSON request body (for --data over gRPC)."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise click.UsageError("--data: a KServe v2 request needs an 'inputs' list")
    tensors = []
    for i, spec in enumerate(body["inputs"]):
        where = f"--data inputs[{i}]"
        if not isinstance(spec, dict):
            raise click.UsageError(f"{where}: must be an object")
        datatype = spec.get("datatype")
        if datatype not in DTYPES:
            raise click.UsageError(f"{where}.datatype: not a KServe v2 data type")
        shape = spec.get("shape")
        if not isinstance(shape, list):
            raise click.UsageError(f"{where}.shape: must be a list")
        array = _to_array(spec.get("data"), datatype, where)
        if array.size != math.prod(shape):
            raise click.UsageError(
                f"{where}.data: has {array.size} values; shape {shape} needs "
                f"{math.prod(shape)}"
            )
        tensors.append(Tensor(str(spec.get("name")), datatype, array.reshape(shape)))
    return tensors


def decode_binary(header: dict[str, Any], tail: bytes) -> dict[str, Any]:
    """Put binary outputs (binary_data_size) back into JSON ``data``."""
    offset = 0
    for out in header.get("outputs", []):
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is None:
            continue
        raw = tail[offset : offset + size]
        offset += size
        out["data"] = _decode(out.get("datatype", ""), raw)
    return header


def _decode(datatype: str, raw: bytes) -> list[Any]:
    if datatype == "BYTES":
        values, pos = [], 0
        while pos + 4 <= len(raw):
            (length,) = struct.unpack_from("<I", raw, pos)
            chunk = raw[pos + 4 : pos + 4 + length]
            pos += 4 + length
            values.append(chunk.decode(errors="replace"))
        return values
    if datatype not in DTYPES:
        return [raw.hex()]
    import numpy as np

    result: list[Any] = np.frombuffer(raw, dtype=DTYPES[datatype]).tolist()
    return result


# ------------------------------------------------------------------ transports


def _model_path(model: str, version: str) -> str:
    path = f"/v2/models/{model}"
    return path + (f"/versions/{version}" if version else "")


def rest_metadata(app: App, model: str, version: str) -> dict[str, Any]:
    response = app.gateway.checked(_model_path(model, version))
    result: dict[str, Any] = response.json()
    return result


def rest_infer(app: App, model: str, version: str, body: bytes) -> dict[str, Any]:
    response = app.gateway.request(_model_path(model, version) + "/infer", body)
    if response.status >= 400:
        raise http_error(response)
    length = response.headers.get("inference-header-content-length")
    if length is not None and length.isdigit():
        header = json.loads(response.body[: int(length)])
        return decode_binary(header, response.body[int(length) :])
    result: dict[str, Any] = response.json()
    return result


class GrpcGateway:
    """The gateway's KServe v2 gRPC service (inference.GRPCInferenceService)."""

    def __init__(self, app: App) -> None:
        import grpc

        from matrixinfer.triton.protocol import service_pb2, service_pb2_grpc

        self.pb = service_pb2
        self.address = app.config.gateway_grpc
        self.metadata = auth_metadata(app.config.token)
        self.timeout_s = app.timeout_s
        self.channel = grpc.insecure_channel(self.address)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: str, request: Any) -> Any:
        import grpc

        try:
            return getattr(self.stub, method)(
                request, timeout=self.timeout_s, metadata=self.metadata
            )
        except grpc.RpcError as e:
            raise rpc_error(e, "gateway", self.address) from None

    def model_metadata(self, model: str, version: str) -> dict[str, Any]:
        response = self._call(
            "ModelMetadata", self.pb.ModelMetadataRequest(name=model, version=version)
        )
        return {
            "name": response.name,
            "inputs": [
                {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                for t in response.inputs
            ],
        }

    def infer(self, model: str, version: str, tensors: list[Tensor]) -> dict[str, Any]:
        request = self.pb.ModelInferRequest(model_name=model, model_version=version)
        for tensor in tensors:
            request.inputs.add(
                name=tensor.name, datatype=tensor.datatype, shape=tensor.array.shape
            )
            request.raw_input_contents.append(tensor.raw())
        response = self._call("ModelInfer", request)
        outputs = []
        for i, out in enumerate(response.outputs):
            raw = (
                response.raw_output_contents[i]
                if i < len(response.raw_output_contents)
                else b""
            )
            outputs.append(
                {
                    "name": out.name,
                    "datatype": out.datatype,
                    "shape": list(out.shape),
                    "data": _decode(out.datatype, raw),
                }
            )
        result: dict[str, Any] = {
            "model_name": response.model_name,
            "model_version": response.model_version,
        }
        if response.id:
            result["id"] = response.id
        result["outputs"] = outputs
        return result


def outputs_table(response: dict[str, Any]) -> str:
    import numpy as np

    rows = []
    for out in response.get("outputs", []):
        data = out.get("data")
        shape = out.get("shape", [])
        try:
            shown = json.dumps(np.asarray(data).reshape(shape).tolist())
        except (ValueError, TypeError):
            shown = json.dumps(data)
        if len(shown) > MAX_SHOWN:
            shown = shown[: MAX_SHOWN - 1] + "…"
        rows.append([str(out.get("name")), str(out.get("datatype")), str(shape), shown])
    return "\n".join(render.format_table(("OUTPUT", "DATATYPE", "SHAPE", "DATA"), rows))


@click.command()
@click.argument("model")
@click.option(
    "-i", "--input", "inputs", multiple=True, metavar="NAME=JSON",
    help="An input tensor as JSON, e.g. X=[[5.1,3.5,1.4,0.2]]; its datatype comes "
    "from the model's metadata (repeatable).",
)  # fmt: skip
@click.option(
    "--npy",
    multiple=True,
    metavar="NAME=PATH",
    help="An input tensor from a .npy file.",
)
@click.option(
    "-d", "--data", "data_path", metavar="FILE",
    help="A whole KServe v2 JSON request body (- for stdin).",
)  # fmt: skip
@click.option("--model-version", default="", help="A model version (default: any).")
@click.option(
    "--grpc", "use_grpc", is_flag=True,
    help="Call the gateway's KServe v2 gRPC port (--gateway-grpc) instead of REST.",
)  # fmt: skip
@click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default="table",
    show_default=True,
)  # fmt: skip
@pass_app
def infer(
    app: App, model: str, inputs: tuple[str, ...], npy: tuple[str, ...],
    data_path: str | None, model_version: str, use_grpc: bool, output: str,
) -> None:  # fmt: skip
    """Run MODEL (the name clients use: a ModelRoute's modelName) once through the
    gateway and print its outputs."""
    if data_path and (inputs or npy):
        raise click.UsageError("use either --data or --input/--npy, not both")
    if not data_path and not inputs and not npy:
        raise click.UsageError("give the inputs: --input NAME=JSON, --npy or --data")
    assigned = [split_assignment(v, "--input") for v in inputs]
    files = [split_assignment(v, "--npy") for v in npy]
    body: Any = None
    if data_path:
        try:
            text = (
                sys.stdin.read()
                if data_path == "-"
                else pathlib.Path(data_path).read_text()
            )
            body = json.loads(text)
        except OSError as e:
            raise click.UsageError(f"--data {data_path}: {e.strerror}") from e
        except ValueError as e:
            raise click.UsageError(f"--data {data_path}: not JSON: {e}") from e
    if use_grpc:
        client = GrpcGateway(app)
        try:
            if body is not None:
                tensors = tensors_from_body(body)
            else:
                meta = client.model_metadata(model, model_version)
                tensors = build_tensors(meta, assigned, files)
            result = client.infer(model, model_version, tensors)
        finally:
            client.close()
    else:
        if body is None:
            meta = rest_metadata(app, model, model_version)
            tensors = build_tensors(meta, assigned, files)
            body = {"inputs": [t.as_json() for t in tensors]}
        result = rest_infer(app, model, model_version, json.dumps(body).encode())
    if output == "json":
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(outputs_table(result))
