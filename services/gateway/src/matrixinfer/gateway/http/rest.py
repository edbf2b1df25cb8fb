"""KServe v2 over HTTP/JSON, transcoded onto the same call path as gRPC.

JSON tensors become raw tensor bytes (numpy does the packing), Triton's binary tensor
data extension (``Inference-Header-Content-Length``) is understood both ways, so
``tritonclient.http`` and curl work unchanged. Errors keep the gRPC status's meaning
in HTTP terms (401, 403, 404, 429 with Retry-After, 503, 504) with KServe's
``{"error": ...}`` body and never echo credentials.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import grpc
import numpy as np
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from matrixinfer.core.errors import InvalidArgument, MatrixInferError, ResourceExhausted
from matrixinfer.core.grpc.errors import http_status_for, status_code_for
from matrixinfer.gateway.domain import generate as gen
from matrixinfer.gateway.domain.dispatch import UpstreamError
from matrixinfer.gateway.grpc.proxy import InferenceProxy
from matrixinfer.gateway.http import openapi
from matrixinfer.gateway.http.admin import AdminApi
from matrixinfer.gateway.http.webutil import Handler, request_headers
from matrixinfer.httpapi.jsonbody import INT64_TYPES, parse_json
from matrixinfer.triton.protocol import service_pb2

HEADER_LENGTH = "Inference-Header-Content-Length"
DTYPES: dict[str, Any] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}  # fmt: skip


def _error(
    code: grpc.StatusCode, message: str, retry_after_s: float | None = None
) -> web.Response:
    response = web.json_response({"error": message}, status=http_status_for(code))
    if retry_after_s is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    return response


def _bytes_tensor(values: list[Any], path: str) -> bytes:
    out = bytearray()
    for value in values:
        if isinstance(value, str):
            data = value.encode()
        elif isinstance(value, bytes):
            data = value
        else:
            raise InvalidArgument.field(path, "BYTES data must be strings")
        out += struct.pack("<I", len(data)) + data
    return bytes(out)


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def build_infer_request(
    model: str, version: str, body: dict[str, Any], binary: bytes
) -> tuple[service_pb2.ModelInferRequest, dict[str, bool]]:
    """The gRPC request for a JSON infer body; also which outputs go back binary."""
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object")
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    if isinstance(body.get("id"), str):
        request.id = body["id"]
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidArgument.field("inputs", "a non-empty list is required")
    offset = 0
    for i, spec in enumerate(inputs):
        path = f"inputs[{i}]"
        if not isinstance(spec, dict):
            raise InvalidArgument.field(path, "must be an object")
        name, datatype, shape = (
            spec.get("name"),
            spec.get("datatype"),
            spec.get("shape"),
        )
        if not isinstance(name, str) or not name:
            raise InvalidArgument.field(f"{path}.name", "required")
        if datatype not in DTYPES and datatype != "BYTES":
            raise InvalidArgument.field(f"{path}.datatype", "not a KServe v2 data type")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31
            for d in shape
        ):
            raise InvalidArgument.field(
                f"{path}.shape", "must be a list of non-negative integers"
            )
        count = math.prod(shape)
        # Described here; the bytes go in raw_input_contents, in input order.
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        parameters = spec.get("parameters") or {}
        size = (
            parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        )
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidArgument.field(
                    f"{path}.parameters.binary_data_size", "past the body's end"
                )
            raw = binary[offset : offset + size]
            offset += size
        else:
            data = spec.get("data")
            if data is None:
                raise InvalidArgument.field(
                    f"{path}.data", "required (or binary_data_size)"
                )
            flat = _flatten(data)
            if len(flat) != count:
                raise InvalidArgument.field(
                    f"{path}.data",
                    f"has {len(flat)} values; shape {shape} needs {count}",
                )
            if datatype == "BYTES":
                raw = _bytes_tensor(flat, f"{path}.data")
            else:
                try:
                    raw = np.asarray(flat, dtype=DTYPES[datatype]).tobytes()
                except (TypeError, ValueError, OverflowError) as e:
                    raise InvalidArgument.field(
                        f"{path}.data", f"not {datatype} values: {e}"
                    ) from e
        if (
            datatype != "BYTES"
            and len(raw) != count * np.dtype(DTYPES[datatype]).itemsize
        ):
            raise InvalidArgument.field(
                f"{path}", "data size does not match shape and datatype"
            )
        request.raw_input_contents.append(raw)
    given = body.get("parameters")
    defaults: dict[str, Any] = given if isinstance(given, dict) else {}
    binary_default = bool(defaults.get("binary_data_output", False))
    binary_outputs: dict[str, bool] = {}
    for j, out in enumerate(body.get("outputs") or []):
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise InvalidArgument.field(f"outputs[{j}].name", "required")
        request.outputs.add(name=out["name"])
        given_params = out.get("parameters")
        params: dict[str, Any] = given_params if isinstance(given_params, dict) else {}
        binary_outputs[out["name"]] = bool(params.get("binary_data", binary_default))
    binary_outputs.setdefault("*", binary_default)
    return request, binary_outputs


def _decode_output(datatype: str, raw: bytes) -> list[Any]:
    if datatype == "BYTES":
        values, pos = [], 0
        while pos + 4 <= len(raw):
            (length,) = struct.unpack_from("<I", raw, pos)
            pos += 4
            chunk = raw[pos : pos + length]
            pos += length
            try:
                values.append(chunk.decode())
            except UnicodeDecodeError:
                values.append(chunk.hex())
        return values
    result: list[Any] = np.frombuffer(raw, dtype=DTYPES[datatype]).tolist()
    return result


def infer_response(
    response: service_pb2.ModelInferResponse, binary_outputs: dict[str, bool]
) -> web.Response:
    outputs, tail = [], bytearray()
    for i, out in enumerate(response.outputs):
        raw = (
            response.raw_output_contents[i]
            if i < len(response.raw_output_contents)
            else b""
        )
        item: dict[str, Any] = {
            "name": out.name,
            "datatype": out.datatype,
            "shape": list(out.shape),
        }
        if binary_outputs.get(out.name, binary_outputs.get("*", False)):
            item["parameters"] = {"binary_data_size": len(raw)}
            tail += raw
        else:
            item["data"] = _decode_output(out.datatype, raw)
        outputs.append(item)
    header = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    if response.id:
        header["id"] = response.id
    header["outputs"] = outputs
    encoded = json.dumps(header, separators=(",", ":")).encode()
    if not tail:
        return web.Response(body=encoded, content_type="application/json")
    result = web.Response(
        body=encoded + bytes(tail), content_type="application/octet-stream"
    )
    result.headers[HEADER_LENGTH] = str(len(encoded))
    return result


def _numbers(message: Any, document: Any) -> Any:
    """``document`` (MessageToDict of ``message``) with 64-bit integers as JSON
    numbers, as Triton's own HTTP API answers (shapes, counts, durations), instead
    of the strings of protobuf's JSON mapping."""
    if not isinstance(document, dict):
        return document
    for field in message.DESCRIPTOR.fields:
        if field.name not in document:
            continue
        value = document[field.name]
        sub = getattr(message, field.name)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            entry = field.message_type
            if entry.GetOptions().map_entry:
                value_field = entry.fields_by_name["value"]
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    for key in value:
                        value[key] = _numbers(sub[key], value[key])
            elif isinstance(value, list):  # a repeated message field
                document[field.name] = [
                    _numbers(m, d) for m, d in zip(sub, value, strict=True)
                ]
            else:
                document[field.name] = _numbers(sub, value)
        elif field.type in INT64_TYPES:
            if isinstance(value, list):
                document[field.name] = [int(v) for v in value]
            else:
                document[field.name] = int(value)
    return document


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except UpstreamError as e:
        return _error(grpc.StatusCode[e.code], e.message)
    except ResourceExhausted as e:
        return _error(
            grpc.StatusCode.RESOURCE_EXHAUSTED, e.message, e.retry_after_s or 1.0
        )
    except MatrixInferError as e:
        return _error(status_code_for(e), e.message)


def rest_app(
    proxy: InferenceProxy,
    ready: Callable[[], bool],
    metrics: CollectorRegistry,
    max_body_bytes: int,
    admin: AdminApi | None = None,
    *,
    auth_required: bool = True,
    dataplane_error: Callable[[], str] = lambda: "",
) -> web.Application:
    """The KServe v2 routes, ``/openapi.json`` and, given ``admin``, the registry's
    admin API (``auth_required`` only shapes the OpenAPI document's security)."""

    async def model_call(method: str, request: web.Request, message: Any) -> bytes:
        return await proxy.handle(
            method, message.SerializeToString(), request_headers(request), None
        )

    def names(request: web.Request) -> tuple[str, str]:
        return request.match_info["model"], request.match_info.get("version", "")

    async def live(request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def server_ready(request: web.Request) -> web.Response:
        body: dict[str, Any] = {"ready": ready()}
        error = dataplane_error()
        if error:  # still serving the last good configuration: ready, but say why
            body["dataplane_error"] = error
        return web.json_response(body, status=200 if ready() else 503)

    async def server_metadata(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "name": "matrixinfer-gateway",
                "version": "0.1.0",
                "extensions": ["binary_tensor_data"],
            }
        )

    async def model_query(request: web.Request, method: str) -> Any:
        """A model-scoped gRPC query, answered with its response message."""
        model, version = names(request)
        kinds = {
            "ModelMetadata": (
                service_pb2.ModelMetadataRequest,
                service_pb2.ModelMetadataResponse,
            ),
            "ModelReady": (
                service_pb2.ModelReadyRequest,
                service_pb2.ModelReadyResponse,
            ),
            "ModelConfig": (
                service_pb2.ModelConfigRequest,
                service_pb2.ModelConfigResponse,
            ),
            "ModelStatistics": (
                service_pb2.ModelStatisticsRequest,
                service_pb2.ModelStatisticsResponse,
            ),
        }
        request_type, response_type = kinds[method]
        raw = await model_call(
            method, request, request_type(name=model, version=version)
        )
        return response_type.FromString(raw)

    def as_json(message: Any) -> web.Response:
        document = json_format.MessageToDict(message, preserving_proto_field_name=True)
        return web.json_response(_numbers(message, document))

    async def model_metadata(request: web.Request) -> web.Response:
        return as_json(await model_query(request, "ModelMetadata"))

    async def model_ready(request: web.Request) -> web.Response:
        is_ready = (await model_query(request, "ModelReady")).ready
        name = request.match_info["model"]
        return web.json_response(
            {"name": name, "ready": is_ready}, status=200 if is_ready else 400
        )

    async def model_config(request: web.Request) -> web.Response:
        return as_json((await model_query(request, "ModelConfig")).config)

    async def model_stats(request: web.Request) -> web.Response:
        return as_json(await model_query(request, "ModelStatistics"))

    async def infer(request: web.Request) -> web.Response:
        model, version = names(request)
        body = await request.read()
        length = request.headers.get(HEADER_LENGTH)
        if length is not None:
            if not length.isdigit() or int(length) > len(body):
                raise InvalidArgument.field(
                    HEADER_LENGTH, "must be the JSON part's length"
                )
            header, binary = body[: int(length)], body[int(length) :]
        else:
            header, binary = body, b""
        message, binary_outputs = build_infer_request(
            model, version, parse_json(header), binary
        )
        raw = await proxy.handle(
            "ModelInfer", message.SerializeToString(), request_headers(request), None
        )
        return infer_response(
            service_pb2.ModelInferResponse.FromString(raw), binary_outputs
        )

    async def generate(request: web.Request) -> web.StreamResponse:
        """Triton's generate extension: one ModelStreamInfer request; /generate
        answers its one response, /generate_stream each as a server-sent event."""
        model, version = names(request)
        body = parse_json(await request.read())
        metadata = await model_query(request, "ModelMetadata")
        document, parameters = gen.generate_request(
            model,
            body,
            {i.name: (i.datatype, list(i.shape)) for i in metadata.inputs},
        )
        message, _ = build_infer_request(model, version, document, b"")
        gen.with_parameters(message, parameters)

        async def one() -> AsyncIterator[bytes]:
            yield message.SerializeToString()

        answers = proxy.stream(one(), request_headers(request), None)
        try:
            return await respond(request, model, answers)
        finally:
            await answers.aclose()  # a client gone mid-stream ends the upstream call

    async def respond(
        request: web.Request, model: str, answers: AsyncGenerator[bytes, None]
    ) -> web.StreamResponse:
        streaming = request.path.endswith("/generate_stream")

        async def next_document() -> dict[str, Any] | None:
            """The next response as a generate document; None at the end."""
            raw = await anext(answers, None)
            if raw is None:
                return None
            reply = service_pb2.ModelStreamInferResponse.FromString(raw)
            if reply.error_message:
                raise InvalidArgument(reply.error_message)
            answer = reply.infer_response
            outputs = {
                out.name: _decode_output(out.datatype, raw_out)
                for out, raw_out in zip(
                    answer.outputs, answer.raw_output_contents, strict=False
                )
            }
            return gen.generate_response(answer, outputs)

        first = await next_document()  # errors before it are plain JSON errors
        if not streaming:
            if first is None or await next_document() is not None:
                raise InvalidArgument(
                    f"/generate takes exactly one response; model {model!r} sent "
                    f"{'none' if first is None else 'several'} (use /generate_stream)"
                )
            return web.json_response(first)
        response = web.StreamResponse(headers={"Content-Type": gen.EVENT_STREAM})
        await response.prepare(request)
        current = first
        try:
            while current is not None:
                await response.write(gen.event(current))
                current = await next_document()
        except (InvalidArgument, UpstreamError) as e:
            # The status went out with the first event: errors are events too.
            await response.write(gen.event({"error": e.message}))
        await response.write_eof()
        return response

    async def metrics_text(request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(metrics))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    app = web.Application(client_max_size=max_body_bytes, middlewares=[errors])
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", server_ready)
    app.router.add_get("/healthz", live)
    app.router.add_get("/readyz", server_ready)
    app.router.add_get("/metrics", metrics_text)
    app.router.add_get("/v2", server_metadata)
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        app.router.add_get(prefix, model_metadata)
        app.router.add_get(prefix + "/ready", model_ready)
        app.router.add_get(prefix + "/config", model_config)
        app.router.add_get(prefix + "/stats", model_stats)
        app.router.add_post(prefix + "/infer", infer)
        app.router.add_post(prefix + "/generate", generate)
        app.router.add_post(prefix + "/generate_stream", generate)
    if admin is not None:
        admin.add_routes(app)
    openapi.add_route(app, admin, auth=auth_required)
    return app
