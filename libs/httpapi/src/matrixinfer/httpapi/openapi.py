"""OpenAPI 3.0 pieces for transcoded routes, derived from the same descriptors and
:class:`~matrixinfer.httpapi.transcoding.Binding` objects that serve them.

Schemas follow protobuf's JSON mapping: 64-bit integers as strings, enums as their
names, repeated fields as arrays, maps as objects, ``Struct``/``Value`` free-form, a
message whose fields are all one oneof as an object with at most one property.
What a server adds around the operations (its error schema, security, its other
routes, the document itself) is the server's; :func:`routes_of` and
:func:`routes_documented` let its tests hold the document to the routes served.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from matrixinfer.httpapi.jsonbody import INT64_TYPES
from matrixinfer.httpapi.transcoding import (
    NDJSON,
    STREAM_TIMEOUT_PARAM,
    Binding,
    enum_names,
    is_map,
    is_well_known,
    message_of,
    query_settable,
    resolve_field,
)

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
_SEGMENT: dict[str, Any] = {"type": "string", "minLength": 1, "pattern": "^[^/]+$"}


def ref(name: str) -> dict[str, Any]:
    """A reference to the component schema ``name``."""
    return {"$ref": f"#/components/schemas/{name}"}


def path_segment() -> dict[str, Any]:
    """The schema of one path segment (what aiohttp's ``{name}`` matches)."""
    return dict(_SEGMENT)


class SchemaBuilder:
    """JSON schemas of protobuf messages, collected as components.

    By default, protobuf's JSON mapping (lowerCamelCase names, closed objects).
    ``proto_names`` describes answers in Triton's HTTP style instead (the gateway's
    KServe routes): ``MessageToDict(preserving_proto_field_name=True)`` names,
    64-bit integers as numbers, and open objects, since a newer server adds fields
    the client library's descriptors do not know.
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
                # Triton's HTTP API carries 64-bit integers as numbers (a server
                # answering in its style turns proto JSON's strings back).
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
        return ref(self.component(descriptor))

    def field(self, field: FieldDescriptor) -> dict[str, Any]:
        if is_map(field):
            value = message_of(field).fields_by_name["value"]
            return {"type": "object", "additionalProperties": self.single(value)}
        if field.is_repeated:
            return {"type": "array", "items": self.single(field)}
        return self.single(field)


# ------------------------------------------------------------------ operations


def path_parameters(builder: SchemaBuilder, binding: Binding) -> list[dict[str, Any]]:
    """The parameters of ``binding``'s path variables (wildcards included)."""
    request: Descriptor = binding.method.input_type
    out = []
    for variable in binding.path.variables:
        if variable.name.startswith("_"):
            schema = path_segment() if variable.single_segment else {"type": "string"}
        else:
            leaf = resolve_field(request, variable.field_path)[-1]
            schema = builder.single(leaf)
            if leaf.type == FieldDescriptor.TYPE_STRING and variable.single_segment:
                schema = path_segment()
        out.append(
            {"name": variable.name, "in": "path", "required": True, "schema": schema}
        )
    return out


def query_parameters(
    builder: SchemaBuilder,
    binding: Binding,
    descriptor: Descriptor,
    prefix: tuple[FieldDescriptor, ...] = (),
) -> list[dict[str, Any]]:
    """The query parameters of ``binding`` for the fields of ``descriptor`` (the
    request message, or one inside it at ``prefix``) neither path nor body sets;
    fields of nested messages as dotted names, down to a few levels."""
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
            out.extend(query_parameters(builder, binding, message_of(field), path))
    return out


def operation(
    builder: SchemaBuilder,
    binding: Binding,
    *,
    error_responses: Mapping[str, Any],
    stream_error: dict[str, Any],
    stream_max_s: float,
) -> dict[str, Any]:
    """The OpenAPI operation of one binding: its parameters, request body and
    responses. ``error_responses`` (``{"default": ...}``, say) join its 200 answer;
    a streaming call's lines are its messages or ``stream_error``, for at most
    ``stream_max_s`` seconds (its ``timeoutSeconds`` maximum and default)."""
    request: Descriptor = binding.method.input_type
    parameters = path_parameters(builder, binding)
    if binding.body != "*":
        parameters += query_parameters(builder, binding, request)
    if binding.streaming:
        parameters.append(
            {
                "name": STREAM_TIMEOUT_PARAM,
                "in": "query",
                "required": False,
                "description": "End the stream after this many seconds (at most "
                f"{stream_max_s:g}, also the default).",
                "schema": {"type": "integer", "minimum": 1, "maximum": 10**12 - 1},
            }
        )
    result: dict[str, Any] = {
        "operationId": binding.operation_id,
        "tags": [str(binding.method.containing_service.name)],
        "summary": f"{binding.method.full_name} over REST",
        "parameters": parameters,
    }
    if binding.body == "*":
        schema = builder.message(request, exclude=binding.bound_top_level)
        result["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": schema}},
        }
    elif binding.body:
        field = request.fields_by_name[binding.body]
        result["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": builder.field(field)}},
        }
    response: Descriptor = binding.method.output_type
    if binding.response_body:
        schema = builder.field(response.fields_by_name[binding.response_body])
    else:
        schema = ref(builder.component(response))
    if binding.streaming:
        line = {"anyOf": [schema, stream_error]}
        content = {NDJSON: {"schema": line}}
        description = "One JSON message a line until the stream's time is up."
    else:
        content = {"application/json": {"schema": schema}}
        description = "The response message in protobuf's JSON mapping."
    result["responses"] = {
        "200": {"description": description, "content": content},
        **error_responses,
    }
    return result


# ------------------------------------------------------------------ routes


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
