"""REST for gRPC services, transcoded from their ``google.api.http`` annotations.

Nothing here lists RPCs: :func:`bindings` reads each method's ``HttpRule`` from a
service descriptor, so an RPC that gains an annotation gets a route (and an OpenAPI
operation, see :mod:`matrixinfer.httpapi.openapi`) without a change here. The rules
are google/api/http.proto's:

- a path variable ``{field}`` (or ``{a.b=literal/*}``) sets that request field;
- ``body: "*"`` maps the whole JSON body onto the request message (fields the path
  sets must not be in it); ``body: "field"`` maps the body onto that one field;
- every other request field may come as a query parameter, by its JSON or proto name
  (``?labelSelector=app%3Diris&limit=10``, ``?resource.kind=Model``; a repeated field
  by repeating the parameter); unknown parameters are refused;
- the response is the message in protobuf's JSON mapping (lowerCamelCase names,
  64-bit integers as strings), or its ``response_body`` field.

A server-streaming RPC is answered as newline-delimited JSON (:data:`NDJSON`), one
message a line, for at most :data:`STREAM_TIMEOUT_PARAM` seconds; the server that
serves the routes decides the cap and runs the stream.

This module only turns HTTP requests into request messages and response messages
into JSON: :func:`transcode` raises
:class:`~matrixinfer.core.errors.InvalidArgument` naming the wrong field. Calling the
service, authentication and mapping gRPC errors to HTTP are the server's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from google.api import annotations_pb2
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)
from google.protobuf.message import Message

from matrixinfer.core.errors import FieldViolation, InvalidArgument

#: The query parameter bounding a server-streaming call, in seconds.
STREAM_TIMEOUT_PARAM = "timeoutSeconds"
#: The content type of a server-streaming call's answer: one JSON message a line.
NDJSON = "application/x-ndjson"

_MAX_DESCRIPTION_CHARS = 300
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


def bindings(service: ServiceDescriptor) -> list[Binding]:
    """Every HTTP binding of ``service``'s annotated methods, in declaration order;
    ValueError for a rule that cannot be served (or two that bind one route)."""
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
