"""The registry's admin API over REST, transcoded from its ``google.api.http``
annotations.

Nothing here lists the RPCs: :func:`bindings` reads each method's ``HttpRule`` from
the descriptors, so an RPC that gains an annotation is served (and documented in
``/openapi.json``) without a change here. The rules are google/api/http.proto's:

- a path variable ``{field}`` (or ``{a.b=literal/*}``) sets that request field;
- ``body: "*"`` maps the whole JSON body onto the request message (fields the path
  sets must not be in it); ``body: "field"`` maps the body onto that one field;
- every other request field may come as a query parameter, by its JSON or proto name
  (``?labelSelector=app%3Diris&limit=10``, ``?resource.kind=Model``; a repeated field
  by repeating the parameter); unknown parameters are refused with 400;
- the response is the message in protobuf's JSON mapping (lowerCamelCase names,
  64-bit integers as strings), or its ``response_body`` field.

A server-streaming RPC (``Watch``) answers newline-delimited JSON
(``application/x-ndjson``), one message a line, for at most ``timeoutSeconds``
(capped by the gateway's ``admin_watch_max_s``, which is also the default) and then
ends, as Kubernetes' ``?watch=true&timeoutSeconds=`` does; clients watch again from
the last ``resourceVersion``. Headers go out with the first event (or after a second
without one), so a request the registry refuses still gets its proper status; an
error after that is the stream's last line, ``{"error": {...}}``.

Every route needs a credential with the ``admin`` scope unless the gateway's
``auth_mode`` is ``off``. Errors keep the gRPC status's meaning in HTTP (see
:data:`matrixinfer.core.grpc.errors.HTTP_STATUS`) with a JSON body naming each
wrong field.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc
from aiohttp import web
from google.api import annotations_pb2
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)
from google.protobuf.message import Message

from matrixinfer.api.v1 import registry_pb2
from matrixinfer.core.errors import (
    FieldViolation,
    InvalidArgument,
    MatrixInferError,
)
from matrixinfer.core.grpc.errors import (
    error_details,
    http_status_for,
    status_code_for,
)
from matrixinfer.core.grpc.interceptors import (
    REQUEST_ID_METADATA_KEY,
    request_id_from_metadata,
)
from matrixinfer.gateway.auth import Authenticator, authorize_admin
from matrixinfer.gateway.jsonbody import parse_json
from matrixinfer.gateway.webutil import Handler, request_headers

log = logging.getLogger(__name__)

REGISTRY: ServiceDescriptor = registry_pb2.DESCRIPTOR.services_by_name["Registry"]

#: The query parameter bounding a server-streaming call, in seconds.
STREAM_TIMEOUT_PARAM = "timeoutSeconds"
NDJSON = "application/x-ndjson"


# A watch's expired resourceVersion is Kubernetes' 410 Gone: list again, then watch.
_EXPIRED_REASON = "EXPIRED"
# What a caller sees for transport failures; the details (addresses) go to the log.
_GENERIC_MESSAGES: Mapping[grpc.StatusCode, str] = {
    grpc.StatusCode.UNAVAILABLE: "the registry is unavailable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the registry did not answer in time",
}
_MAX_DESCRIPTION_CHARS = 300
# Headers of a stream wait this long for its first message (see the module doc).
_STREAM_HEADERS_GRACE_S = 1.0
_PARSE_ERRORS = (
    json_format.ParseError,
    ValueError,
    TypeError,
    AttributeError,
    KeyError,
    IndexError,
    OverflowError,
    RecursionError,
)
# Well-known types whose JSON form is one string, so a query parameter can set them.
_STRING_WELL_KNOWN = frozenset(
    {
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
    }
)


class HttpError(Exception):
    """A refusal that is HTTP's own (body too large), not a gRPC status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


# ------------------------------------------------------------------ path templates


@dataclass(frozen=True)
class PathVariable:
    """``{a.b}`` or ``{a.b=literal/*}`` in a path template."""

    #: Proto field names from the request message down to the bound field.
    field_path: tuple[str, ...]
    #: The aiohttp placeholder (an identifier).
    route_name: str
    #: ``("*",)`` for a plain ``{field}``: one path segment.
    segments: tuple[str, ...] = ("*",)

    @property
    def name(self) -> str:
        """The dotted field path, also the OpenAPI parameter name."""
        return ".".join(self.field_path)

    @property
    def single_segment(self) -> bool:
        return self.segments == ("*",)


@dataclass(frozen=True)
class PathTemplate:
    template: str
    #: The aiohttp route path.
    route: str
    #: The OpenAPI path (``{dotted.name}`` placeholders).
    openapi: str
    variables: tuple[PathVariable, ...]


_LITERAL = re.compile(r"[^/{}*:=]+")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _TemplateParser:
    """google.api.http's grammar::

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb     = ":" LITERAL ;
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.wildcards = 0

    def fail(self, why: str) -> ValueError:
        return ValueError(f"path template {self.text!r}, at {self.pos}: {why}")

    def at(self, token: str) -> bool:
        return self.text.startswith(token, self.pos)

    def take(self, token: str) -> None:
        if not self.at(token):
            raise self.fail(f"expected {token!r}")
        self.pos += len(token)

    def match(self, pattern: re.Pattern[str], what: str) -> str:
        found = pattern.match(self.text, self.pos)
        if found is None:
            raise self.fail(f"expected {what}")
        self.pos = found.end()
        return found.group()

    def segments(self, nested: bool) -> list[str | PathVariable]:
        out = [self.segment(nested)]
        while self.at("/"):
            self.pos += 1
            out.append(self.segment(nested))
        return out

    def segment(self, nested: bool) -> str | PathVariable:
        if self.at("**"):
            self.pos += 2
            return "**"
        if self.at("*"):
            self.pos += 1
            return "*"
        if self.at("{"):
            if nested:
                raise self.fail("variables do not nest")
            return self.variable()
        return self.match(_LITERAL, "a literal segment")

    def variable(self) -> PathVariable:
        self.take("{")
        path = [self.match(_IDENT, "a field name")]
        while self.at("."):
            self.pos += 1
            path.append(self.match(_IDENT, "a field name"))
        segments: tuple[str, ...] = ("*",)
        if self.at("="):
            self.pos += 1
            parts = self.segments(nested=True)
            segments = tuple(p for p in parts if isinstance(p, str))
        self.take("}")
        return PathVariable(tuple(path), "__".join(path), segments)

    def parse(self) -> tuple[list[str | PathVariable], str]:
        self.take("/")
        parts = self.segments(nested=False)
        verb = ""
        if self.at(":"):
            self.pos += 1
            verb = self.match(_LITERAL, "a verb")
        if self.pos != len(self.text):
            raise self.fail("unexpected text")
        return parts, verb


def _segment_regex(segment: str) -> str:
    if segment == "**":
        return ".+"
    if segment == "*":
        return "[^/]+"
    return re.escape(segment)


def parse_template(template: str) -> PathTemplate:
    """The aiohttp route and OpenAPI path of a google.api.http path template."""
    parser = _TemplateParser(template)
    parts, verb = parser.parse()
    route: list[str] = []
    openapi: list[str] = []
    variables: list[PathVariable] = []
    for i, part in enumerate(parts):
        if isinstance(part, PathVariable):
            variables.append(part)
            if part.single_segment:
                route.append(f"{{{part.route_name}}}")
            else:
                regex = "/".join(_segment_regex(s) for s in part.segments)
                route.append(f"{{{part.route_name}:{regex}}}")
            openapi.append(f"{{{part.name}}}")
        elif part in ("*", "**"):
            # Matched but bound to no field, as the spec says.
            name = f"_wildcard{i}"
            route.append(f"{{{name}:{_segment_regex(part)}}}")
            openapi.append(f"{{{name}}}")
            variables.append(PathVariable((name,), name, (part,)))
        else:
            route.append(part)
            openapi.append(part)
    suffix = f":{verb}" if verb else ""
    return PathTemplate(
        template,
        "/" + "/".join(route) + suffix,
        "/" + "/".join(openapi) + suffix,
        tuple(variables),
    )


# ------------------------------------------------------------------ bindings


@dataclass(frozen=True)
class Binding:
    """One HTTP route of one RPC (its rule or one of its additional_bindings)."""

    method: MethodDescriptor
    verb: str
    path: PathTemplate
    #: "" (no body), "*" (the whole request) or a top-level field name.
    body: str
    response_body: str
    #: 0 for the rule itself, n for its additional_bindings[n - 1].
    index: int

    @property
    def rpc(self) -> str:
        return str(self.method.name)

    @property
    def key(self) -> tuple[str, int]:
        return self.rpc, self.index

    @property
    def streaming(self) -> bool:
        return bool(self.method.server_streaming)

    @property
    def operation_id(self) -> str:
        name = f"{self.method.containing_service.name}_{self.rpc}"
        return name if self.index == 0 else f"{name}_{self.index}"

    @property
    def bound_paths(self) -> tuple[tuple[str, ...], ...]:
        """Field paths set by the URL path (wildcards excluded)."""
        return tuple(
            v.field_path for v in self.path.variables if not v.name.startswith("_")
        )

    @property
    def bound_top_level(self) -> frozenset[str]:
        return frozenset(p[0] for p in self.bound_paths)


_VERBS = ("get", "put", "post", "delete", "patch")


def _binding(method: MethodDescriptor, rule: Any, index: int) -> Binding:
    pattern = rule.WhichOneof("pattern")
    if pattern is None:
        raise ValueError(f"{method.full_name}: google.api.http rule without a path")
    if pattern == "custom":
        verb, template = rule.custom.kind.upper(), rule.custom.path
    else:
        verb, template = pattern.upper(), getattr(rule, pattern)
    if method.client_streaming:
        raise ValueError(f"{method.full_name}: client streaming has no REST mapping")
    path = parse_template(template)
    request: Descriptor = method.input_type
    for variable in path.variables:
        if variable.name.startswith("_"):
            continue
        leaf = resolve_field(request, variable.field_path)[-1]
        if leaf.is_repeated or leaf.type == FieldDescriptor.TYPE_MESSAGE:
            raise ValueError(
                f"{method.full_name}: path variable {variable.name} must name a "
                "singular scalar field"
            )
    if rule.body not in ("", "*") and rule.body not in request.fields_by_name:
        raise ValueError(f"{method.full_name}: no body field {rule.body!r}")
    if method.server_streaming and STREAM_TIMEOUT_PARAM in {
        f.json_name for f in request.fields
    }:
        raise ValueError(f"{method.full_name}: a field clashes with the stream timeout")
    return Binding(method, verb, path, rule.body, rule.response_body, index)


def bindings(service: ServiceDescriptor = REGISTRY) -> list[Binding]:
    """Every HTTP binding of ``service``'s annotated methods, in declaration order."""
    out: list[Binding] = []
    seen: dict[tuple[str, str], str] = {}
    for method in service.methods:
        options = method.GetOptions()
        if not options.HasExtension(annotations_pb2.http):
            continue
        rule = options.Extensions[annotations_pb2.http]
        rules = [rule, *rule.additional_bindings]
        for index, each in enumerate(rules):
            binding = _binding(method, each, index)
            route = (binding.verb, re.sub(r"\{[^}]*\}", "{}", binding.path.route))
            if route in seen:
                raise ValueError(
                    f"{method.full_name} and {seen[route]} bind the same route {route}"
                )
            seen[route] = method.full_name
            out.append(binding)
    return out


# ------------------------------------------------------------------ transcoding


def message_class(descriptor: Descriptor) -> type[Message]:
    cls: type[Message] = message_factory.GetMessageClass(descriptor)
    return cls


def _find_field(descriptor: Descriptor, name: str) -> FieldDescriptor | None:
    found: FieldDescriptor | None = descriptor.fields_by_name.get(name)
    if found is not None:
        return found
    for candidate in descriptor.fields:
        if candidate.json_name == name:
            return candidate
    return None


def resolve_field(descriptor: Descriptor, path: Sequence[str]) -> list[FieldDescriptor]:
    """The fields along ``path`` (proto or JSON names); ValueError if one is not
    there or the path goes through something other than a singular message."""
    fields: list[FieldDescriptor] = []
    current: Descriptor | None = descriptor
    for i, name in enumerate(path):
        if current is None:
            raise ValueError(f"{'.'.join(path[:i])} is not a message")
        found = _find_field(current, name)
        if found is None:
            raise ValueError(f"no field {name!r} in {current.full_name}")
        fields.append(found)
        if i < len(path) - 1 and (
            found.is_repeated or found.type != FieldDescriptor.TYPE_MESSAGE
        ):
            raise ValueError(f"{'.'.join(path[: i + 1])} is not a singular message")
        current = found.message_type
    return fields


def message_of(field: FieldDescriptor) -> Descriptor:
    """The message type of a message-typed field."""
    descriptor = field.message_type
    if descriptor is None:
        raise ValueError(f"{field.full_name} is not a message field")
    return descriptor


def enum_names(field: FieldDescriptor) -> list[str]:
    enum = field.enum_type
    return [] if enum is None else [str(v.name) for v in enum.values]


def descriptor_of(message: Message) -> Descriptor:
    return cast(Descriptor, message.DESCRIPTOR)


def is_well_known(descriptor: Descriptor) -> bool:
    return str(descriptor.file.name).startswith("google/protobuf/")


def is_map(field: FieldDescriptor) -> bool:
    return bool(
        field.type == FieldDescriptor.TYPE_MESSAGE
        and message_of(field).GetOptions().map_entry
    )


def query_settable(field: FieldDescriptor) -> bool:
    """Whether a query parameter can carry the field's value (one string each)."""
    if is_map(field):
        return False
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        return True
    full_name = str(message_of(field).full_name)
    return full_name in _STRING_WELL_KNOWN or (
        str(message_of(field).file.name) == "google/protobuf/wrappers.proto"
    )


def expected(field: FieldDescriptor) -> str:
    """What a field's JSON value must be, for error messages."""
    kind = field.type
    if kind == FieldDescriptor.TYPE_BOOL:
        text = "true or false"
    elif kind == FieldDescriptor.TYPE_STRING:
        text = "a string"
    elif kind == FieldDescriptor.TYPE_BYTES:
        text = "base64 bytes"
    elif kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        text = "a number"
    elif kind == FieldDescriptor.TYPE_ENUM:
        names = ", ".join(enum_names(field))
        text = f"one of {names}"
    elif kind == FieldDescriptor.TYPE_MESSAGE:
        full_name = str(message_of(field).full_name)
        text = {
            "google.protobuf.Timestamp": "an RFC 3339 timestamp",
            "google.protobuf.Duration": 'a duration such as "1.5s"',
        }.get(full_name, "an object")
    elif field.cpp_type in (
        FieldDescriptor.CPPTYPE_INT64,
        FieldDescriptor.CPPTYPE_UINT64,
    ):
        text = "a 64-bit integer (a string or a number)"
    else:
        text = "a 32-bit integer"
    if field.is_repeated and not is_map(field):
        return f"a list of {text}"
    return text


_PARSE_PREFIX = re.compile(r"^(?:Failed to parse \w+ field: )+")
_PARSE_AT = re.compile(r"\s+at\s+\S+$")


def _truncate(text: str, limit: int = _MAX_DESCRIPTION_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Python's own wording ("invalid literal for int() with base 10") says no more than
# "expected an integer" does.
_PYTHON_WORDING = re.compile(r"invalid literal|bytes-like|object of type|NoneType")


def _describe(error: BaseException) -> str:
    text = _PARSE_PREFIX.sub("", str(error)).split("\n", 1)[0].rstrip(".")
    return _truncate(_PARSE_AT.sub("", text).rstrip(".") or type(error).__name__)


def _mismatch(field: FieldDescriptor, error: BaseException) -> str:
    detail = _describe(error)
    wanted = f"expected {expected(field)}"
    if _PYTHON_WORDING.search(detail) or detail.lower().startswith("expected"):
        return wanted
    return f"{wanted}: {detail}"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _try_parse(descriptor: Descriptor, value: Any) -> BaseException | None:
    try:
        json_format.ParseDict(value, message_class(descriptor)())
    except _PARSE_ERRORS as e:
        return e
    return None


def _locate(
    descriptor: Descriptor, value: Any, path: str, error: BaseException
) -> FieldViolation:
    """The first wrong field in ``value`` (parsed as ``descriptor``): the JSON parser
    does not say precisely where it failed, so each field is tried on its own."""
    if is_well_known(descriptor):
        return FieldViolation(path, _describe(error))
    if not isinstance(value, dict):
        return FieldViolation(path, f"expected an object, got {_json_type(value)}")
    fields: dict[str, FieldDescriptor] = {}
    for key in value:
        found = _find_field(descriptor, key) if isinstance(key, str) else None
        if found is None:
            known = ", ".join(f.json_name for f in descriptor.fields)
            return FieldViolation(
                _join(path, str(key)), _truncate(f"unknown field; known: {known}")
            )
        fields[key] = found
    for oneof in descriptor.oneofs:
        members = [k for k, f in fields.items() if f.containing_oneof == oneof]
        if len(members) > 1 and not _synthetic(oneof):
            return FieldViolation(
                path or members[0],
                f"at most one of {', '.join(members)} may be set",
            )
    for key, field in fields.items():
        item = value[key]
        failure = _try_parse(descriptor, {key: item})
        if failure is None:
            continue
        here = _join(path, key)
        sub = field.message_type if field.type == FieldDescriptor.TYPE_MESSAGE else None
        if item is None:
            return FieldViolation(here, _describe(failure))
        if is_map(field):
            if not isinstance(item, dict):
                return FieldViolation(
                    here, f"expected an object, got {_json_type(item)}"
                )
            value_field = message_of(field).fields_by_name["value"]
            for map_key, map_value in item.items():
                one = _try_parse(descriptor, {key: {map_key: map_value}})
                if one is None:
                    continue
                entry = f"{here}[{map_key}]"
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    return _locate(message_of(value_field), map_value, entry, one)
                return FieldViolation(entry, f"expected {expected(value_field)}")
            return FieldViolation(here, _describe(failure))
        if field.is_repeated:
            if not isinstance(item, list):
                return FieldViolation(here, f"expected a list, got {_json_type(item)}")
            for i, element in enumerate(item):
                one = _try_parse(descriptor, {key: [element]})
                if one is None:
                    continue
                if sub is not None:
                    return _locate(sub, element, f"{here}[{i}]", one)
                return FieldViolation(
                    f"{here}[{i}]", _mismatch(field, one).replace("a list of ", "", 1)
                )
            return FieldViolation(here, _describe(failure))
        if sub is not None and not is_well_known(sub):
            return _locate(sub, item, here, failure)
        return FieldViolation(here, _mismatch(field, failure))
    return FieldViolation(path, _describe(error))


def _synthetic(oneof: Any) -> bool:
    """proto3 ``optional`` fields sit in a oneof of their own."""
    fields = list(oneof.fields)
    return len(fields) == 1 and oneof.name == f"_{fields[0].name}"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def parse_into(message: Message, value: Any, *, name: str | None = None) -> None:
    """Merge JSON ``value`` into ``message``; InvalidArgument names the wrong field
    (``name`` when the caller knows it better, e.g. a query parameter's spelling)."""
    try:
        json_format.ParseDict(value, message, ignore_unknown_fields=False)
    except _PARSE_ERRORS as e:
        violation = _locate(descriptor_of(message), value, "", e)
        if name is not None:
            violation = FieldViolation(name, violation.description)
        raise InvalidArgument(str(violation), [violation]) from None


def _nest(names: Sequence[str], value: Any) -> dict[str, Any]:
    out: Any = value
    for name in reversed(names):
        out = {name: out}
    result: dict[str, Any] = out
    return result


_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})


def _text_value(field: FieldDescriptor, text: str, name: str) -> Any:
    """A path or query string as the JSON value ParseDict expects for ``field``."""
    if field.type == FieldDescriptor.TYPE_BOOL:
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise InvalidArgument.field(name, "expected true or false")
    return text


def _overlaps(a: Sequence[str], b: Sequence[str]) -> bool:
    shorter = min(len(a), len(b))
    return tuple(a[:shorter]) == tuple(b[:shorter])


def transcode(
    binding: Binding,
    path_values: Mapping[str, str],
    query: Iterable[tuple[str, str]],
    body: Any,
) -> Message:
    """The request message for one HTTP request; ``body`` is the parsed JSON body or
    None when there was none. Raises InvalidArgument naming the wrong field."""
    descriptor: Descriptor = binding.method.input_type
    request = message_class(descriptor)()
    if binding.body == "*":
        if body is not None:
            if not isinstance(body, dict):
                raise InvalidArgument(
                    f"the request body must be a JSON object, not {_json_type(body)}"
                )
            for key in body:
                found = _find_field(descriptor, key)
                if found is not None and found.name in binding.bound_top_level:
                    raise InvalidArgument.field(
                        key, "set by the URL path; leave it out of the body"
                    )
            parse_into(request, body)
    elif binding.body:
        if body is not None:
            field = descriptor.fields_by_name[binding.body]
            parse_into(request, {field.json_name: body})
    elif body is not None:
        raise InvalidArgument("this method takes no request body")
    _apply_query(request, binding, query)
    for variable in binding.path.variables:
        if variable.name.startswith("_"):
            continue
        fields = resolve_field(descriptor, variable.field_path)
        text = path_values[variable.route_name]
        value = _text_value(fields[-1], text, variable.name)
        parse_into(
            request, _nest([f.json_name for f in fields], value), name=variable.name
        )
    return request


def _apply_query(
    request: Message, binding: Binding, query: Iterable[tuple[str, str]]
) -> None:
    descriptor = descriptor_of(request)
    grouped: dict[str, list[str]] = {}
    for key, value in query:
        grouped.setdefault(key, []).append(value)
    for key, values in grouped.items():
        if binding.body == "*":
            raise InvalidArgument.field(
                key, "unknown query parameter: this method takes its fields in the body"
            )
        try:
            fields = resolve_field(descriptor, key.split("."))
        except ValueError:
            raise InvalidArgument.field(key, "unknown query parameter") from None
        names = [f.name for f in fields]
        if any(_overlaps(names, bound) for bound in binding.bound_paths):
            raise InvalidArgument.field(key, "set by the URL path")
        if binding.body and names[0] == binding.body:
            raise InvalidArgument.field(key, "set by the request body")
        leaf = fields[-1]
        if not query_settable(leaf):
            raise InvalidArgument.field(key, "cannot be set from the query string")
        if not leaf.is_repeated and len(values) > 1:
            raise InvalidArgument.field(key, "given more than once")
        converted = [_text_value(leaf, v, key) for v in values]
        given: Any = converted if leaf.is_repeated else converted[0]
        parse_into(request, _nest([f.json_name for f in fields], given), name=key)


def render(binding: Binding, message: Message) -> Any:
    """The JSON of a response message (or of its ``response_body`` field)."""
    if not binding.response_body:
        return json_format.MessageToDict(message, preserving_proto_field_name=False)
    field = message.DESCRIPTOR.fields_by_name[binding.response_body]
    whole = json_format.MessageToDict(
        message,
        preserving_proto_field_name=False,
        always_print_fields_with_no_presence=True,
    )
    return whole.get(field.json_name)


# ------------------------------------------------------------------ JSON and errors


def http_status(code: grpc.StatusCode, reason: str | None = None) -> int:
    if code == grpc.StatusCode.OUT_OF_RANGE and reason == _EXPIRED_REASON:
        return 410
    return http_status_for(code)


def error_body(
    code: grpc.StatusCode,
    message: str,
    reason: str | None = None,
    violations: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    body: dict[str, Any] = {"error": message, "code": code.name}
    if reason:
        body["reason"] = reason
    if violations:
        body["fieldViolations"] = [
            {"field": f, "description": d} for f, d in violations
        ]
    return body


def _respond(
    status: int,
    body: dict[str, Any],
    request_id: str,
    retry_after_s: float | None = None,
) -> web.Response:
    response = web.json_response(body, status=status)
    response.headers[REQUEST_ID_METADATA_KEY] = request_id
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="matrixinfer"'
    if retry_after_s is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    return response


def rpc_error(error: grpc.aio.AioRpcError) -> tuple[int, dict[str, Any], float | None]:
    """HTTP status, body and Retry-After for a failed registry call."""
    details = error_details(error)
    reason = details.error_info.reason if details.error_info is not None else None
    if details.error_info is None and details.code in _GENERIC_MESSAGES:
        # Not the registry's own refusal but the channel's: keep addresses out.
        log.warning("registry call failed: %s %s", details.code.name, details.message)
        message = _GENERIC_MESSAGES[details.code]
    else:
        message = details.message or details.code.name
    body = error_body(details.code, message, reason, details.field_violations)
    return http_status(details.code, reason), body, details.retry_after_s


def our_error(error: MatrixInferError) -> tuple[int, dict[str, Any]]:
    code = status_code_for(error)
    violations = (
        [(v.field, v.description) for v in error.violations]
        if isinstance(error, InvalidArgument)
        else []
    )
    return http_status(code), error_body(code, error.message, error.reason, violations)


# ------------------------------------------------------------------ the routes


class AdminApi:
    """The annotated RPCs of ``service`` as aiohttp routes, calling ``channel``."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        authenticator: Authenticator | None,
        *,
        auth_required: bool = True,
        timeout_s: float = 10.0,
        max_body_bytes: int = 1024 * 1024,
        watch_max_s: float = 1800.0,
        service: ServiceDescriptor = REGISTRY,
    ) -> None:
        if auth_required and authenticator is None:
            raise ValueError("an authenticator is required when auth is on")
        self.service = service
        self.bindings = bindings(service)
        self.auth_required = auth_required
        self.watch_max_s = watch_max_s
        self._authenticator = authenticator
        self._timeout_s = timeout_s
        self._max_body_bytes = max_body_bytes
        self._stops: set[asyncio.Event] = set()
        self._calls: dict[str, Any] = {}
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            response_type = message_class(method.output_type)
            factory = (
                channel.unary_stream
                if method.server_streaming
                else (channel.unary_unary)
            )
            self._calls[method.name] = factory(
                path,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response_type.FromString,
            )

    def add_routes(self, app: web.Application) -> None:
        """Adds one route per binding; the ones sharing a path share a resource."""
        resources: dict[str, web.Resource] = {}
        for binding in self.bindings:
            resource = resources.get(binding.path.route)
            if resource is None:
                resource = app.router.add_resource(binding.path.route)
                resources[binding.path.route] = resource
            resource.add_route(binding.verb, self._handler(binding))
        app.on_shutdown.append(self._end_streams)

    async def _end_streams(self, app: web.Application) -> None:
        for stop in list(self._stops):
            stop.set()

    def _authorize(self, request: web.Request) -> None:
        if not self.auth_required or self._authenticator is None:
            return
        authorize_admin(self._authenticator.authenticate(request_headers(request)))

    async def _body(self, request: web.Request) -> Any:
        limit = self._max_body_bytes
        too_large = HttpError(
            413, "RESOURCE_EXHAUSTED", f"the request body is over {limit} bytes"
        )
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        raw = bytearray()
        while chunk := await request.content.readany():
            raw += chunk
            if len(raw) > limit:
                raise too_large
        if not raw.strip():
            return None
        return parse_json(bytes(raw))

    def _stream_timeout_s(
        self, request: web.Request
    ) -> tuple[float, list[tuple[str, str]]]:
        query = list(request.query.items())
        given = [v for k, v in query if k == STREAM_TIMEOUT_PARAM]
        rest = [(k, v) for k, v in query if k != STREAM_TIMEOUT_PARAM]
        if not given:
            return self.watch_max_s, rest
        if len(given) > 1:
            raise InvalidArgument.field(STREAM_TIMEOUT_PARAM, "given more than once")
        text = given[0]
        if not re.fullmatch(r"[0-9]{1,12}", text) or int(text) < 1:
            raise InvalidArgument.field(
                STREAM_TIMEOUT_PARAM, "a whole number of seconds, at least 1"
            )
        return min(float(int(text)), self.watch_max_s), rest

    def _handler(self, binding: Binding) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            request_id = request_id_from_metadata(
                [
                    (
                        REQUEST_ID_METADATA_KEY,
                        request.headers.get(REQUEST_ID_METADATA_KEY),
                    )
                ]
            )
            metadata = ((REQUEST_ID_METADATA_KEY, request_id),)
            try:
                self._authorize(request)
                if binding.streaming:
                    timeout_s, query = self._stream_timeout_s(request)
                else:
                    timeout_s, query = self._timeout_s, list(request.query.items())
                message = transcode(
                    binding, request.match_info, query, await self._body(request)
                )
                call = self._calls[binding.rpc]
                if binding.streaming:
                    return await self._stream(
                        request,
                        binding,
                        call(message, timeout=timeout_s, metadata=metadata),
                        request_id,
                    )
                response = await call(message, timeout=timeout_s, metadata=metadata)
                result = web.json_response(render(binding, response))
                result.headers[REQUEST_ID_METADATA_KEY] = request_id
                return result
            except grpc.aio.AioRpcError as e:
                status, body, retry_after_s = rpc_error(e)
                return _respond(status, body, request_id, retry_after_s)
            except MatrixInferError as e:
                status, body = our_error(e)
                log.debug("admin %s refused: %s", binding.rpc, e.message)
                return _respond(status, body, request_id)
            except HttpError as e:
                return _respond(
                    e.status, {"error": e.message, "code": e.code}, request_id
                )

        return handle

    async def _stream(
        self,
        request: web.Request,
        binding: Binding,
        call: Any,
        request_id: str,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": NDJSON, REQUEST_ID_METADATA_KEY: request_id}
        )
        stop = asyncio.Event()
        self._stops.add(stop)
        loop = asyncio.get_running_loop()
        headers_by = loop.time() + _STREAM_HEADERS_GRACE_S
        reading: asyncio.Future[Any] = asyncio.ensure_future(call.read())
        stopping = asyncio.ensure_future(stop.wait())
        started = False
        try:
            while True:
                wait_s = None if started else max(0.0, headers_by - loop.time())
                done, _ = await asyncio.wait(
                    {reading, stopping},
                    timeout=wait_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if stopping in done:
                    break
                if reading not in done:  # nothing yet: the stream has begun anyway
                    await response.prepare(request)
                    started = True
                    continue
                try:
                    item = reading.result()
                except grpc.aio.AioRpcError as e:
                    if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                        break  # the stream's own duration is over
                    status, body, retry_after_s = rpc_error(e)
                    if not started:
                        return _respond(status, body, request_id, retry_after_s)
                    await response.write(_line({"error": body}))
                    break
                if item is grpc.aio.EOF:
                    break
                if not started:
                    await response.prepare(request)
                    started = True
                await response.write(_line(render(binding, item)))
                reading = asyncio.ensure_future(call.read())
            if not started:
                await response.prepare(request)
            await response.write_eof()
        except ConnectionResetError:
            log.debug("admin %s: the client went away", binding.rpc)
        finally:
            self._stops.discard(stop)
            for task in (reading, stopping):
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved: nothing to log at collection
                task.cancel()
            call.cancel()
        return response


def _line(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"
