"""The gateway's OpenAPI 3.0 document, served at ``GET /openapi.json``.

The registry's admin routes and their schemas come from
:mod:`matrixinfer.httpapi.openapi`, derived from the same descriptors and bindings
that serve them; this module adds the error schemas and security. The KServe v2
routes that :func:`matrixinfer.gateway.http.rest.rest_app` serves are described here by
hand (their handlers are), with the Triton messages' schemas again taken from their
descriptors (snake_case there: that is how rest.py answers).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from matrixinfer.gateway.http.admin import AdminApi
from matrixinfer.httpapi.openapi import (
    SchemaBuilder,
    operation,
    path_segment,
    ref,
)
from matrixinfer.httpapi.transcoding import Binding, message_of
from matrixinfer.triton.protocol import service_pb2

VERSION = "0.1.0"
#: The KServe v2 tensor data types rest.py accepts.
DATATYPES = (
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
)  # fmt: skip
KSERVE_PREFIXES = ("/v2/models/{model}", "/v2/models/{model}/versions/{version}")
_SECURITY: list[dict[str, list[str]]] = [{"apiKey": []}, {"bearer": []}]


# ------------------------------------------------------------------ admin


def _error_responses() -> dict[str, Any]:
    return {
        "default": {
            "description": "An error; `code` is the gRPC status name.",
            "content": {"application/json": {"schema": ref("Error")}},
        }
    }


def admin_operation(
    builder: SchemaBuilder, admin: AdminApi, binding: Binding
) -> dict[str, Any]:
    """The operation of one admin binding, with the gateway's errors and security."""
    result = operation(
        builder,
        binding,
        error_responses=_error_responses(),
        stream_error=ref("StreamError"),
        stream_max_s=admin.watch_max_s,
    )
    result["security"] = _SECURITY if admin.auth_required else []
    return result


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
                "items": ref("InferInputTensor"),
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
    metadata = ref(builder.component(service_pb2.ModelMetadataResponse.DESCRIPTOR))
    config = ref(builder.component(message_of(config_type)))
    stats = ref(builder.component(service_pb2.ModelStatisticsResponse.DESCRIPTOR))
    model_ready = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
    }
    names = ["model"] + (["version"] if "{version}" in prefix else [])
    params = [
        {"name": name, "in": "path", "required": True, "schema": path_segment()}
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
                "application/json": {"schema": ref("InferRequest")},
                "application/octet-stream": binary,
            },
        },
        "responses": {
            "200": {
                "description": "The outputs; with binary tensors, the JSON header "
                "(its length in Inference-Header-Content-Length) and then the "
                "tensors' bytes.",
                "content": {
                    "application/json": {"schema": ref("InferResponse")},
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

    not_ready = _json({"anyOf": [model_ready, ref("Error")]}, "Not ready.")
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
            "properties": {"error": ref("Error")},
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
