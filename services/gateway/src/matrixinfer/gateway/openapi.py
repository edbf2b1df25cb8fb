"""The gateway's OpenAPI 3.0 document, served at ``GET /openapi.json``.

The registry's admin routes and their schemas are derived from the same descriptors
and :class:`~matrixinfer.gateway.admin.Binding` objects that serve them, with
protobuf's JSON mapping: 64-bit integers as strings, enums as their names, repeated
fields as arrays, maps as objects, ``Struct``/``Value`` free-form, a message whose
fields are all one oneof as an object with at most one property. The KServe v2
routes that :func:`matrixinfer.gateway.rest.rest_app` serves are described here by
hand (their handlers are), with the Triton messages' schemas again taken from their
descriptors (snake_case there: that is how rest.py answers).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from matrixinfer.gateway.admin import (
    NDJSON,
    STREAM_TIMEOUT_PARAM,
    AdminApi,
    Binding,
    enum_names,
    is_map,
    is_well_known,
    message_of,
    query_settable,
    resolve_field,
)
from matrixinfer.gateway.jsonbody import INT64_TYPES
from matrixinfer.triton.protocol import service_pb2

VERSION = "0.1.0"
#: The KServe v2 tensor data types rest.py accepts.
DATATYPES = (
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
)  # fmt: skip
KSERVE_PREFIXES = ("/v2/models/{model}", "/v2/models/{model}/versions/{version}")
# Nested message fields become dotted query parameters down to this depth.
_MAX_QUERY_DEPTH = 3
_INT32 = {
    "type": "integer",
    "format": "int32",
    "minimum": -(2**31),
    "maximum": 2**31 - 1,
}
_UINT32 = {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1}
_INT64 = {"type": "string", "format": "int64", "pattern": "^-?[0-9]{1,19}$"}
_UINT64 = {"type": "string", "format": "uint64", "pattern": "^[0-9]{1,20}$"}
_FLOAT: dict[str, Any] = {
    "oneOf": [
        {"type": "number"},
        {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]},
    ]
}
_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_DOUBLE: _FLOAT,
    FieldDescriptor.TYPE_FLOAT: _FLOAT,
    FieldDescriptor.TYPE_INT32: _INT32,
    FieldDescriptor.TYPE_SINT32: _INT32,
    FieldDescriptor.TYPE_SFIXED32: _INT32,
    FieldDescriptor.TYPE_UINT32: _UINT32,
    FieldDescriptor.TYPE_FIXED32: _UINT32,
    FieldDescriptor.TYPE_INT64: _INT64,
    FieldDescriptor.TYPE_SINT64: _INT64,
    FieldDescriptor.TYPE_SFIXED64: _INT64,
    FieldDescriptor.TYPE_UINT64: _UINT64,
    FieldDescriptor.TYPE_FIXED64: _UINT64,
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": "^-?[0-9]{1,12}(\\.[0-9]{1,9})?s$",
    },
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Any": {
        "type": "object",
        "required": ["@type"],
        "properties": {"@type": {"type": "string"}},
        "additionalProperties": True,
    },
}
# A path segment: what aiohttp's {name} placeholder matches.
_SEGMENT = {"type": "string", "minLength": 1, "pattern": "^[^/]+$"}
_SECURITY: list[dict[str, list[str]]] = [{"apiKey": []}, {"bearer": []}]


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


class SchemaBuilder:
    """JSON schemas of protobuf messages, collected as components.

    ``proto_names`` describes ``MessageToDict(preserving_proto_field_name=True)``
    output (rest.py's KServe answers); otherwise lowerCamelCase JSON names. Those
    answers are Triton's own (HAProxy passes them through), and a newer server adds
    fields the client library's descriptors do not know: their objects stay open.
    """

    def __init__(self, schemas: dict[str, Any], *, proto_names: bool = False) -> None:
        self.schemas = schemas
        self.proto_names = proto_names

    def name(self, field: FieldDescriptor) -> str:
        return str(field.name if self.proto_names else field.json_name)

    def component(self, descriptor: Descriptor) -> str:
        name = str(descriptor.full_name)
        if self.proto_names:
            name += ".protoNames"
        if name not in self.schemas:
            self.schemas[name] = {}  # placeholder first: messages may recurse
            self.schemas[name] = self.message(descriptor)
        return name

    def message(
        self, descriptor: Descriptor, exclude: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        fields = [f for f in descriptor.fields if f.name not in exclude]
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {self.name(f): self.field(f) for f in fields},
            "additionalProperties": self.proto_names,
        }
        oneofs = [
            o
            for o in descriptor.oneofs
            if not (len(o.fields) == 1 and o.name == f"_{o.fields[0].name}")
        ]
        if len(oneofs) == 1 and all(f.containing_oneof == oneofs[0] for f in fields):
            schema["maxProperties"] = 1
        elif oneofs:
            schema["description"] = "; ".join(
                "at most one of " + ", ".join(self.name(f) for f in o.fields)
                for o in oneofs
            )
        return schema

    def single(self, field: FieldDescriptor) -> dict[str, Any]:
        """The schema of one value of ``field`` (an element, if repeated)."""
        if field.type == FieldDescriptor.TYPE_ENUM:
            return {"type": "string", "enum": enum_names(field)}
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            if self.proto_names and field.type in INT64_TYPES:
                # KServe answers carry 64-bit integers as numbers, as Triton's
                # HTTP API does (rest.py turns proto JSON's strings back).
                return {"type": "integer", "format": "int64"}
            return dict(_SCALARS[field.type])
        descriptor = message_of(field)
        full_name = str(descriptor.full_name)
        if full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[full_name])
        if str(descriptor.file.name) == "google/protobuf/wrappers.proto":
            return self.single(descriptor.fields_by_name["value"])
        if is_well_known(descriptor):
            return {}
        return _ref(self.component(descriptor))

    def field(self, field: FieldDescriptor) -> dict[str, Any]:
        if is_map(field):
            value = message_of(field).fields_by_name["value"]
            return {"type": "object", "additionalProperties": self.single(value)}
        if field.is_repeated:
            return {"type": "array", "items": self.single(field)}
        return self.single(field)


# ------------------------------------------------------------------ admin


def _path_parameter(builder: SchemaBuilder, binding: Binding) -> list[dict[str, Any]]:
    request: Descriptor = binding.method.input_type
    out = []
    for variable in binding.path.variables:
        if variable.name.startswith("_"):
            schema = dict(_SEGMENT) if variable.single_segment else {"type": "string"}
        else:
            leaf = resolve_field(request, variable.field_path)[-1]
            schema = builder.single(leaf)
            if leaf.type == FieldDescriptor.TYPE_STRING and variable.single_segment:
                schema = dict(_SEGMENT)
        out.append(
            {"name": variable.name, "in": "path", "required": True, "schema": schema}
        )
    return out


def _query_parameters(
    builder: SchemaBuilder,
    binding: Binding,
    descriptor: Descriptor,
    prefix: tuple[FieldDescriptor, ...] = (),
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for field in descriptor.fields:
        path = (*prefix, field)
        names = tuple(f.name for f in path)
        if any(
            names[: len(bound)] == bound or bound[: len(names)] == names
            for bound in binding.bound_paths
        ):
            continue  # the path sets it, or a field inside it
        if binding.body and names[0] == binding.body:
            continue
        if query_settable(field):
            name = ".".join(str(f.json_name) for f in path)
            parameter: dict[str, Any] = {
                "name": name,
                "in": "query",
                "required": False,
                "schema": builder.field(field),
            }
            if field.is_repeated:
                parameter.update(style="form", explode=True)
            out.append(parameter)
        elif (
            field.type == FieldDescriptor.TYPE_MESSAGE
            and not field.is_repeated
            and not is_map(field)
            and not is_well_known(message_of(field))
            and len(path) < _MAX_QUERY_DEPTH
            and field.message_type not in [f.message_type for f in prefix]
        ):
            out.extend(_query_parameters(builder, binding, message_of(field), path))
    return out


def _error_responses() -> dict[str, Any]:
    return {
        "default": {
            "description": "An error; `code` is the gRPC status name.",
            "content": {"application/json": {"schema": _ref("Error")}},
        }
    }


def admin_operation(
    builder: SchemaBuilder, admin: AdminApi, binding: Binding
) -> dict[str, Any]:
    request: Descriptor = binding.method.input_type
    parameters = _path_parameter(builder, binding)
    if binding.body != "*":
        parameters += _query_parameters(builder, binding, request)
    if binding.streaming:
        parameters.append(
            {
                "name": STREAM_TIMEOUT_PARAM,
                "in": "query",
                "required": False,
                "description": "End the stream after this many seconds (at most "
                f"{admin.watch_max_s:g}, also the default).",
                "schema": {"type": "integer", "minimum": 1, "maximum": 10**12 - 1},
            }
        )
    operation: dict[str, Any] = {
        "operationId": binding.operation_id,
        "tags": [str(binding.method.containing_service.name)],
        "summary": f"{binding.method.full_name} over REST",
        "parameters": parameters,
    }
    if binding.body == "*":
        schema = builder.message(request, exclude=binding.bound_top_level)
        operation["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": schema}},
        }
    elif binding.body:
        field = request.fields_by_name[binding.body]
        operation["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": builder.field(field)}},
        }
    response: Descriptor = binding.method.output_type
    if binding.response_body:
        schema = builder.field(response.fields_by_name[binding.response_body])
    else:
        schema = _ref(builder.component(response))
    if binding.streaming:
        line = {"anyOf": [schema, _ref("StreamError")]}
        content = {NDJSON: {"schema": line}}
        description = "One JSON message a line until the stream's time is up."
    else:
        content = {"application/json": {"schema": schema}}
        description = "The response message in protobuf's JSON mapping."
    operation["responses"] = {
        "200": {"description": description, "content": content},
        **_error_responses(),
    }
    operation["security"] = _SECURITY if admin.auth_required else []
    return operation


# ------------------------------------------------------------------ KServe v2


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }


def _kserve_schemas(schemas: dict[str, Any]) -> None:
    parameters = {"type": "object", "additionalProperties": True}
    shape = {"type": "array", "items": {"type": "integer", "minimum": 0}}
    schemas["InferInputTensor"] = {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "shape": shape,
            "datatype": {"type": "string", "enum": list(DATATYPES)},
            "parameters": {
                "type": "object",
                "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
                "additionalProperties": True,
            },
            "data": {
                "description": "Row-major values, flat or nested as the shape; "
                "required unless parameters.binary_data_size is given.",
                "type": "array",
                "items": {},
            },
        },
    }
    schemas["InferRequest"] = {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {
                "type": "object",
                "properties": {"binary_data_output": {"type": "boolean"}},
                "additionalProperties": True,
            },
            "inputs": {
                "type": "array",
                "minItems": 1,
                "items": _ref("InferInputTensor"),
            },
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string"},
                        "parameters": {
                            "type": "object",
                            "properties": {"binary_data": {"type": "boolean"}},
                            "additionalProperties": True,
                        },
                    },
                },
            },
        },
    }
    schemas["InferResponse"] = {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "datatype", "shape"],
                    "properties": {
                        "name": {"type": "string"},
                        "datatype": {"type": "string"},
                        "shape": shape,
                        "parameters": parameters,
                        "data": {"type": "array", "items": {}},
                    },
                },
            },
        },
    }


def _kserve_paths(builder: SchemaBuilder, auth: bool) -> dict[str, Any]:
    security = _SECURITY if auth else []
    live = {"type": "object", "properties": {"live": {"type": "boolean"}}}
    ready = {"type": "object", "properties": {"ready": {"type": "boolean"}}}

    def health(operation_id: str, schema: dict[str, Any], unready: bool) -> Any:
        responses = {"200": _json(schema, "Serving.")}
        if unready:
            responses["503"] = _json(
                schema, "Not ready: the routing table is not synced."
            )
        return {
            "get": {
                "operationId": operation_id,
                "tags": ["health"],
                "security": [],
                "responses": responses,
            }
        }

    paths: dict[str, Any] = {
        "/v2/health/live": health("ServerLive", live, False),
        "/v2/health/ready": health("ServerReady", ready, True),
        "/healthz": health("Healthz", live, False),
        "/readyz": health("Readyz", ready, True),
        "/metrics": {
            "get": {
                "operationId": "Metrics",
                "tags": ["health"],
                "security": [],
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/v2": {
            "get": {
                "operationId": "ServerMetadata",
                "tags": ["kserve"],
                "security": [],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "name": {"type": "string"},
                                "version": {"type": "string"},
                                "extensions": {
                                    "type": "array",
                                    "items": {"type": "string"},
                                },
                            },
                        },
                        "Server metadata.",
                    )
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "OpenApi",
                "tags": ["health"],
                "security": [],
                "responses": {"200": _json({"type": "object"}, "This document.")},
            }
        },
    }
    for prefix in KSERVE_PREFIXES:
        paths.update(_model_paths(builder, prefix, security))
    return paths


def _model_paths(
    builder: SchemaBuilder, prefix: str, security: list[dict[str, list[str]]]
) -> dict[str, Any]:
    """The model-scoped routes under ``prefix`` (with or without a version)."""
    errors = _error_responses()
    config_type = service_pb2.ModelConfigResponse.DESCRIPTOR.fields_by_name["config"]
    metadata = _ref(builder.component(service_pb2.ModelMetadataResponse.DESCRIPTOR))
    config = _ref(builder.component(message_of(config_type)))
    stats = _ref(builder.component(service_pb2.ModelStatisticsResponse.DESCRIPTOR))
    model_ready = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
    }
    names = ["model"] + (["version"] if "{version}" in prefix else [])
    params = [
        {"name": name, "in": "path", "required": True, "schema": dict(_SEGMENT)}
        for name in names
    ]
    suffix = "Version" if "{version}" in prefix else ""

    def get(name: str, ok: dict[str, Any], **extra: Any) -> Any:
        return {
            "get": {
                "operationId": name + suffix,
                "tags": ["kserve"],
                "parameters": params,
                "security": security,
                "responses": {"200": ok, **extra, **errors},
            }
        }

    binary = {"schema": {"type": "string", "format": "binary"}}
    infer = {
        "operationId": "ModelInfer" + suffix,
        "tags": ["kserve"],
        "parameters": params,
        "security": security,
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _ref("InferRequest")},
                "application/octet-stream": binary,
            },
        },
        "responses": {
            "200": {
                "description": "The outputs; with binary tensors, the JSON header "
                "(its length in Inference-Header-Content-Length) and then the "
                "tensors' bytes.",
                "content": {
                    "application/json": {"schema": _ref("InferResponse")},
                    "application/octet-stream": binary,
                },
            },
            **errors,
        },
    }
    # Triton's generate extension: keys naming inputs are tensors, the rest
    # (and "parameters") request parameters.
    generate_body = {
        "type": "object",
        "properties": {
            "text_input": {"type": "string"},
            "parameters": {"type": "object"},
        },
        "additionalProperties": True,
    }

    def generate(name: str, content_type: str, description: str) -> Any:
        return {
            "post": {
                "operationId": name + suffix,
                "tags": ["kserve"],
                "parameters": params,
                "security": security,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": generate_body}},
                },
                "responses": {
                    "200": {
                        "description": description,
                        "content": {content_type: {"schema": {"type": "object"}}},
                    },
                    **errors,
                },
            }
        }

    not_ready = _json({"anyOf": [model_ready, _ref("Error")]}, "Not ready.")
    return {
        prefix: get("ModelMetadata", _json(metadata, "Model metadata.")),
        prefix + "/ready": get(
            "ModelReady", _json(model_ready, "Ready."), **{"400": not_ready}
        ),
        prefix + "/config": get(
            "ModelConfig", _json(config, "The Triton model configuration.")
        ),
        prefix + "/stats": get("ModelStatistics", _json(stats, "Statistics.")),
        prefix + "/infer": {"post": infer},
        prefix + "/generate": generate(
            "ModelGenerate",
            "application/json",
            "The model's one response: model_name, model_version and each output "
            "by name.",
        ),
        prefix + "/generate_stream": generate(
            "ModelGenerateStream",
            "text/event-stream",
            "Each response as a server-sent event (data: <JSON>); an error after "
            "the first is an event holding error.",
        ),
    }


# ------------------------------------------------------------------ the document


def document(admin: AdminApi | None = None, *, auth: bool = True) -> dict[str, Any]:
    """The OpenAPI document of what ``rest_app(..., admin=admin)`` serves."""
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {"type": "string"},
                "code": {"type": "string"},
                "reason": {"type": "string"},
                "fieldViolations": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "field": {"type": "string"},
                            "description": {"type": "string"},
                        },
                    },
                },
            },
        },
        "StreamError": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": _ref("Error")},
            "additionalProperties": False,
        },
    }
    _kserve_schemas(schemas)
    paths = _kserve_paths(SchemaBuilder(schemas, proto_names=True), auth)
    tags = [
        {"name": "kserve", "description": "KServe v2 inference over HTTP/JSON."},
        {"name": "health", "description": "Probes, metrics and this document."},
    ]
    if admin is not None:
        builder = SchemaBuilder(schemas)
        for binding in admin.bindings:
            operations = paths.setdefault(binding.path.openapi, {})
            operations[binding.verb.lower()] = admin_operation(builder, admin, binding)
        tags.append(
            {
                "name": str(admin.service.name),
                "description": f"{admin.service.full_name}, transcoded from its "
                "google.api.http annotations; needs the admin scope.",
            }
        )
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "MatrixInfer gateway",
            "version": VERSION,
            "description": "KServe v2 inference and the registry's admin API. "
            "Send an API key as `x-api-key` or `authorization: Bearer`.",
        },
        "tags": tags,
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }


def add_route(app: web.Application, admin: AdminApi | None, *, auth: bool) -> None:
    """Serves the document at ``GET /openapi.json`` (built once, on first use)."""
    built: list[bytes] = []

    async def serve(request: web.Request) -> web.Response:
        if not built:
            built.append(json.dumps(document(admin, auth=auth)).encode())
        return web.Response(body=built[0], content_type="application/json")

    app.router.add_get("/openapi.json", serve)


def routes_of(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route ``app`` serves, HEAD aside (aiohttp answers it
    for each GET), with placeholders written ``{}``."""
    return {
        (route.method, _normalize(route.resource.canonical))
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


def routes_documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), _normalize(path))
        for path, operations in doc["paths"].items()
        for method in operations
    }


def _normalize(path: str) -> str:
    out, depth = [], 0
    for char in path:
        if char == "{":
            if depth == 0:
                out.append("{}")
            depth += 1
        elif char == "}":
            depth -= 1
        elif depth == 0:
            out.append(char)
    return "".join(out)
