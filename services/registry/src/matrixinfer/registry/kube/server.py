"""The Kubernetes REST paths over the registry's domain service.

Every read and write goes through :class:`RegistryService` (the same admission,
store and watch the gRPC API uses); this module only translates: paths and query
parameters in, Kubernetes JSON (objects, lists, Tables, watch events, Status) out.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from google.protobuf import json_format

from matrixinfer.api.envelope import wrap
from matrixinfer.api.kinds import VERSION, Kind
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.core.errors import (
    Conflict,
    InvalidArgument,
    MatrixInferError,
    ViolationCollector,
)
from matrixinfer.httpapi.jsonbody import parse_json
from matrixinfer.registry.domain import structure
from matrixinfer.registry.domain.kinds import unwrap
from matrixinfer.registry.domain.manifest import parse_manifest
from matrixinfer.registry.domain.selectors import parse_selector
from matrixinfer.registry.domain.service import MAX_PAGE, RegistryService
from matrixinfer.registry.kube import openapi
from matrixinfer.registry.kube.auth import KubeAuth
from matrixinfer.registry.kube.patch import merge_patch
from matrixinfer.registry.kube.resources import (
    BY_RESOURCE,
    CATEGORY,
    GROUPS,
    RESOURCE_VERBS,
    SHORT_NAMES,
    STATUS_VERBS,
    group_version,
    table,
    to_kube,
)
from matrixinfer.registry.kube.status import KubeError, status_for

log = logging.getLogger(__name__)

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
#: Largest request body, bytes (the manifest limit of Apply).
MAX_BODY_BYTES = 1 << 20
#: A merge patch without a resourceVersion is retried this often on a concurrent
#: write (as the API server does), then answered with Conflict.
PATCH_ATTEMPTS = 5
#: What /version reports: this server's own version, not a Kubernetes release.
VERSION_INFO = {
    "major": "0",
    "minor": "1",
    "gitVersion": "v0.1.0+matrixinfer",
    "gitCommit": "",
    "gitTreeState": "",
    "buildDate": "",
    "goVersion": "",
    "compiler": "",
    "platform": "python",
}
#: Metadata fields Kubernetes clients send back that the registry does not keep.
_DROPPED_METADATA = ("managedFields", "selfLink")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: Any, code: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=code,
        content_type=JSON,
    )


def _not_found() -> KubeError:
    return KubeError(
        404, "NotFound", "the server could not find the requested resource"
    )


def _wants_table(request: web.Request) -> bool:
    for part in request.headers.get("Accept", "").split(","):
        params = dict(p.strip().split("=", 1) for p in part.split(";")[1:] if "=" in p)
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io":
            return True
    return False


#: Aggregated discovery (apidiscovery.k8s.io/v2): one answer per /api and /apis
#: with every resource, instead of one request per group/version.
AGGREGATED = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"


def _wants_aggregated(request: web.Request) -> bool:
    for part in request.headers.get("Accept", "").split(","):
        params = dict(p.strip().split("=", 1) for p in part.split(";")[1:] if "=" in p)
        if (
            params.get("as") == "APIGroupDiscoveryList"
            and params.get("g") == "apidiscovery.k8s.io"
            and params.get("v") == "v2"
        ):
            return True
    return False


def _aggregated(groups: list[dict[str, Any]]) -> web.Response:
    body = {
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": groups,
    }
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        headers={"Content-Type": AGGREGATED},
    )


def _dry_run(request: web.Request) -> bool:
    values = request.query.getall("dryRun", [])
    for value in values:
        if value != "All":
            raise InvalidArgument.field("dryRun", f"unsupported value {value!r}")
    return bool(values)


def _truthy(value: str | None) -> bool:
    return value in ("1", "true", "True")


@dataclass(frozen=True)
class _Target:
    kind: Kind
    namespace: str
    name: str


#: The resource a request addresses, for the Status of its errors.
TARGET = web.RequestKey("target", _Target)


class KubeApi:
    """The aiohttp application serving the Kubernetes API of ``service``."""

    def __init__(
        self,
        service: RegistryService,
        now: Callable[[], datetime.datetime] | None = None,
        auth: KubeAuth | None = None,
    ) -> None:
        self.service = service
        self.auth = auth
        self.now = now or (lambda: datetime.datetime.now(datetime.UTC))
        self.openapi = openapi.documents()
        self.openapi_root = openapi.root(self.openapi)

    def app(self) -> web.Application:
        # Errors outermost: a refused caller gets a Status object too.
        middlewares: list[Any] = [self._errors]
        if self.auth is not None:
            middlewares.append(self.auth.middleware)
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=middlewares)
        r = app.router
        r.add_get("/version", self.version)
        r.add_get("/api", self.core_versions)
        r.add_get("/apis", self.groups)
        r.add_get("/apis/{group}", self.group)
        r.add_get("/apis/{group}/{version}", self.resources)
        r.add_get("/openapi/v3", self.openapi_index)
        r.add_get("/openapi/v3/apis/{group}/{version}", self.openapi_document)
        gv = "/apis/{group}/{version}"
        r.add_get(gv + "/{plural}", self.list_or_watch)
        collection = gv + "/namespaces/{namespace}/{plural}"
        r.add_get(collection, self.list_or_watch)
        r.add_post(collection, self.create)
        item = collection + "/{name}"
        r.add_get(item, self.get)
        r.add_put(item, self.update)
        r.add_patch(item, self.patch)
        r.add_delete(item, self.delete)
        r.add_get(item + "/status", self.get)
        r.add_put(item + "/status", self.update_status)
        r.add_patch(item + "/status", self.patch_status)
        return app

    # ------------------------------------------------------------------ plumbing

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return _json(status_for(_not_found()), 404)
        except web.HTTPMethodNotAllowed as e:
            error = KubeError(
                405, "MethodNotAllowed", f"{request.method} is not allowed"
            )
            return _json(status_for(error), e.status)
        except web.HTTPRequestEntityTooLarge:
            error = KubeError(
                413, "RequestEntityTooLarge", f"larger than {MAX_BODY_BYTES} bytes"
            )
            return _json(status_for(error), 413)
        except web.HTTPException:
            raise
        except Exception as e:  # ours become their Status; others, InternalError
            target = request.get(TARGET)
            answer = status_for(
                e,
                kind=target.kind.plural if target else "",
                name=target.name if target else "",
                group=target.kind.group if target else "",
            )
            if answer.get("reason") == "Invalid" and target is not None:
                answer["details"]["kind"] = target.kind.name
            return _json(answer, int(answer["code"]))

    def _target(self, request: web.Request) -> _Target:
        info = request.match_info
        if info["version"] != VERSION:
            raise _not_found()
        kind = BY_RESOURCE.get((info["group"], info["plural"]))
        if kind is None:
            raise _not_found()
        target = _Target(kind, info.get("namespace", ""), info.get("name", ""))
        request[TARGET] = target
        return target

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        if request.content_type == APPLY_PATCH:
            docs = parse_manifest(raw.decode("utf-8", "replace"))
            if len(docs) != 1:
                raise InvalidArgument.field("body", "exactly one object")
            return docs[0]
        return parse_json(raw)

    def _prepare(self, target: _Target, body: Any) -> dict[str, Any]:
        """A request's object checked against its path, ready for admission."""
        kind = target.kind
        if not isinstance(body, dict):
            raise KubeError(400, "BadRequest", f"the body must be a {kind.name} object")
        doc = dict(body)
        doc.setdefault("apiVersion", group_version(kind))
        doc.setdefault("kind", kind.name)
        if doc["kind"] != kind.name:
            raise KubeError(
                400,
                "BadRequest",
                f"the kind in the body ({doc['kind']!r}) is not {kind.name}, the "
                f"kind of {kind.plural}",
            )
        meta = doc.get("metadata")
        if meta is None:
            meta = {}
        if not isinstance(meta, dict):
            raise InvalidArgument.field("metadata", "must be a mapping")
        meta = {k: v for k, v in meta.items() if k not in _DROPPED_METADATA}
        namespace = meta.get("namespace") or target.namespace
        if namespace != target.namespace:
            raise KubeError(
                400,
                "BadRequest",
                "the namespace of the object does not match the namespace on the "
                f"request ({namespace!r} and {target.namespace!r})",
            )
        meta["namespace"] = namespace
        if target.name:
            name = meta.get("name") or target.name
            if name != target.name:
                raise KubeError(
                    400,
                    "BadRequest",
                    "the name of the object does not match the name on the URL "
                    f"({name!r} and {target.name!r})",
                )
            meta["name"] = name
        doc["metadata"] = meta
        return doc

    async def _admit(
        self, doc: dict[str, Any], dry_run: bool, create_only: bool = False
    ) -> tuple[str, pb.Resource]:
        outcomes = await self.service.apply(
            json.dumps(doc), [], dry_run=dry_run, create_only=create_only
        )
        return outcomes[0].action, outcomes[0].resource

    def _field_filter(self, request: web.Request) -> Callable[[pb.Resource], bool]:
        text = request.query.get("fieldSelector", "")
        selector = parse_selector(text, "fieldSelector")

        def selected(resource: pb.Resource) -> bool:
            meta = unwrap(resource).metadata
            return selector(
                {"metadata.name": meta.name, "metadata.namespace": meta.namespace}
            )

        return selected

    def _render(
        self, request: web.Request, kind: Kind, resource: pb.Resource
    ) -> dict[str, Any]:
        if _wants_table(request):
            rv = unwrap(resource).metadata.resource_version
            return table(
                kind,
                [resource],
                self.now(),
                request.query.get("includeObject", "Metadata"),
                {"resourceVersion": rv},
            )
        return to_kube(resource)

    # ------------------------------------------------------------------ discovery

    async def version(self, request: web.Request) -> web.StreamResponse:
        return _json(VERSION_INFO)

    async def core_versions(self, request: web.Request) -> web.StreamResponse:
        if _wants_aggregated(request):
            return _aggregated([])
        return _json(
            {"kind": "APIVersions", "versions": [], "serverAddressByClientCIDRs": []}
        )

    @staticmethod
    def _group(group: str) -> dict[str, Any]:
        version = {"groupVersion": f"{group}/{VERSION}", "version": VERSION}
        return {"name": group, "versions": [version], "preferredVersion": version}

    async def groups(self, request: web.Request) -> web.StreamResponse:
        if _wants_aggregated(request):
            return _aggregated([self._group_discovery(g) for g in GROUPS])
        return _json(
            {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [self._group(g) for g in GROUPS],
            }
        )

    @staticmethod
    def _group_discovery(group: str) -> dict[str, Any]:
        resources = []
        for kind in GROUPS[group]:
            response_kind = {"group": group, "version": VERSION, "kind": kind.name}
            resources.append(
                {
                    "resource": kind.plural,
                    "responseKind": response_kind,
                    "scope": "Namespaced",
                    "singularResource": kind.name.lower(),
                    "verbs": list(RESOURCE_VERBS),
                    "shortNames": SHORT_NAMES[kind.name],
                    "categories": [CATEGORY],
                    "subresources": [
                        {
                            "subresource": "status",
                            "responseKind": response_kind,
                            "verbs": list(STATUS_VERBS),
                        }
                    ],
                }
            )
        return {
            "metadata": {"name": group},
            "versions": [
                {"version": VERSION, "resources": resources, "freshness": "Current"}
            ],
        }

    async def group(self, request: web.Request) -> web.StreamResponse:
        group = request.match_info["group"]
        if group not in GROUPS:
            raise _not_found()
        return _json({"kind": "APIGroup", "apiVersion": "v1", **self._group(group)})

    async def resources(self, request: web.Request) -> web.StreamResponse:
        group, version = request.match_info["group"], request.match_info["version"]
        if group not in GROUPS or version != VERSION:
            raise _not_found()
        resources: list[dict[str, Any]] = []
        for kind in GROUPS[group]:
            resources.append(
                {
                    "name": kind.plural,
                    "singularName": kind.name.lower(),
                    "namespaced": True,
                    "kind": kind.name,
                    "verbs": list(RESOURCE_VERBS),
                    "shortNames": SHORT_NAMES[kind.name],
                    "categories": [CATEGORY],
                }
            )
            resources.append(
                {
                    "name": f"{kind.plural}/status",
                    "singularName": "",
                    "namespaced": True,
                    "kind": kind.name,
                    "verbs": list(STATUS_VERBS),
                }
            )
        return _json(
            {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": f"{group}/{version}",
                "resources": resources,
            }
        )

    async def openapi_index(self, request: web.Request) -> web.StreamResponse:
        return _json(self.openapi_root)

    async def openapi_document(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        body = self.openapi.get(f"apis/{info['group']}/{info['version']}")
        if body is None:
            raise _not_found()
        return web.Response(body=body, content_type=JSON)

    # ------------------------------------------------------------------ reads

    async def get(self, request: web.Request) -> web.StreamResponse:
        target = self._target(request)
        resource = await self.service.get(
            target.kind.name, target.namespace, target.name
        )
        return _json(self._render(request, target.kind, resource))

    async def list_or_watch(self, request: web.Request) -> web.StreamResponse:
        target = self._target(request)
        if _truthy(request.query.get("watch")):
            return await self.watch(request, target)
        kind = target.kind
        try:
            limit = int(request.query.get("limit") or 0)
        except ValueError:
            raise InvalidArgument.field("limit", "must be a number") from None
        selected = self._field_filter(request)
        items, rv, token = await self.service.list(
            kind.name,
            target.namespace,
            request.query.get("labelSelector", ""),
            min(limit, MAX_PAGE),
            request.query.get("continue", ""),
        )
        items = [r for r in items if selected(r)]
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if token:
            meta["continue"] = token
        if _wants_table(request):
            include = request.query.get("includeObject", "Metadata")
            return _json(table(kind, items, self.now(), include, meta))
        return _json(
            {
                "kind": f"{kind.name}List",
                "apiVersion": group_version(kind),
                "metadata": meta,
                "items": [to_kube(r) for r in items],
            }
        )

    async def watch(self, request: web.Request, target: _Target) -> web.StreamResponse:
        kind = target.kind
        query = request.query
        rv = query.get("resourceVersion", "")
        send_initial = _truthy(query.get("sendInitialEvents"))
        bookmarks = _truthy(query.get("allowWatchBookmarks"))
        # Kubernetes: no resourceVersion (or "0") starts with the current state.
        initial = send_initial or rv in ("", "0")
        timeout_s: float | None = None
        if query.get("timeoutSeconds"):
            try:
                timeout_s = float(int(query["timeoutSeconds"]))
            except ValueError:
                raise InvalidArgument.field(
                    "timeoutSeconds", "must be a number"
                ) from None
        selected = self._field_filter(request)
        stream = await self.service.open_watch(
            kind.name,
            target.namespace,
            query.get("labelSelector", ""),
            "" if rv == "0" else rv,
            initial,
            bookmarks,
        )
        as_table = _wants_table(request)
        include = query.get("includeObject", "Metadata")
        response = web.StreamResponse(headers={"Content-Type": JSON})
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            async with asyncio.timeout(timeout_s):
                async for item in stream:
                    obj: dict[str, Any]
                    if item.type == "BOOKMARK":
                        if not bookmarks or (
                            item.initial_events_end and not send_initial
                        ):
                            continue
                        meta: dict[str, Any] = {
                            "resourceVersion": str(item.resource_version)
                        }
                        if item.initial_events_end:
                            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
                        obj = {
                            "kind": kind.name,
                            "apiVersion": group_version(kind),
                            "metadata": meta,
                        }
                    else:
                        assert item.resource is not None
                        if not selected(item.resource):
                            continue
                        if as_table:
                            obj = table(
                                kind,
                                [item.resource],
                                self.now(),
                                include,
                                {"resourceVersion": str(item.resource_version)},
                            )
                        else:
                            obj = to_kube(item.resource)
                    await response.write(
                        json.dumps({"type": item.type, "object": obj}).encode() + b"\n"
                    )
        except TimeoutError:
            pass
        except MatrixInferError as e:
            event = {"type": "ERROR", "object": status_for(e)}
            with contextlib.suppress(ConnectionError):
                await response.write(json.dumps(event).encode() + b"\n")
        except ConnectionError:
            pass
        finally:
            stream.close()
        return response

    # ------------------------------------------------------------------ writes

    async def create(self, request: web.Request) -> web.StreamResponse:
        target = self._target(request)
        dry_run = _dry_run(request)
        doc = self._prepare(target, await self._body(request))
        name = doc["metadata"].get("name")
        if isinstance(name, str):
            request[TARGET] = _Target(target.kind, target.namespace, name)
        _, resource = await self._admit(doc, dry_run, create_only=True)
        return _json(to_kube(resource), 201)

    async def update(self, request: web.Request) -> web.StreamResponse:
        target = self._target(request)
        dry_run = _dry_run(request)
        doc = self._prepare(target, await self._body(request))
        current = await self.service.get(
            target.kind.name, target.namespace, target.name
        )
        if not doc["metadata"].get("resourceVersion"):
            doc["metadata"]["resourceVersion"] = unwrap(
                current
            ).metadata.resource_version
        return _json(to_kube(await self._replace(target, doc, current, dry_run)))

    async def _replace(
        self,
        target: _Target,
        doc: dict[str, Any],
        current: pb.Resource,
        dry_run: bool,
    ) -> pb.Resource:
        """Write ``doc`` over ``current``: Apply for spec, labels, annotations and
        added finalizers; finalizers it leaves out are removed after (Apply only
        adds them). An object being deleted only loses finalizers."""
        kind = target.kind
        meta = unwrap(current).metadata
        wanted = doc["metadata"].get("finalizers") or []
        removed = [f for f in meta.finalizers if f not in wanted]
        if meta.deletion_timestamp and removed:
            if dry_run:
                return current
            return await self.service.update_finalizers(
                kind.name, target.namespace, target.name, [], removed
            )
        _, resource = await self._admit(doc, dry_run)
        if removed and not dry_run:
            resource = await self.service.update_finalizers(
                kind.name, target.namespace, target.name, [], removed
            )
        return resource

    def _patch_type(self, request: web.Request) -> str:
        content_type = request.content_type
        if content_type not in (MERGE_PATCH, APPLY_PATCH):
            raise KubeError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format ({content_type}) - "
                f"accepted media types include: {MERGE_PATCH}, {APPLY_PATCH}",
            )
        return content_type

    async def _merged(
        self,
        target: _Target,
        patch: Any,
        write: Callable[[dict[str, Any], pb.Resource], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Apply a merge patch to the current object and hand it to ``write``;
        again on a concurrent change unless the patch pins a resourceVersion."""
        if not isinstance(patch, dict):
            raise KubeError(400, "BadRequest", "a merge patch must be a JSON object")
        pinned = isinstance(patch.get("metadata"), dict) and bool(
            patch["metadata"].get("resourceVersion")
        )
        for attempt in range(PATCH_ATTEMPTS):
            current = await self.service.get(
                target.kind.name, target.namespace, target.name
            )
            merged = merge_patch(to_kube(current), patch)
            try:
                return await write(merged, current)
            except Conflict:
                if pinned or attempt == PATCH_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def patch(self, request: web.Request) -> web.StreamResponse:
        target = self._target(request)
        dry_run = _dry_run(request)
        patch_type = self._patch_type(request)
        body = await self._body(request)
        if patch_type == APPLY_PATCH:
            # Server-side apply: the applied object is the desired spec, labels and
            # annotations (the registry's Apply), created when missing.
            doc = self._prepare(target, body)
            action, resource = await self._admit(doc, dry_run)
            return _json(to_kube(resource), 201 if action == "created" else 200)

        async def write(
            merged: dict[str, Any], current: pb.Resource
        ) -> web.StreamResponse:
            doc = self._prepare(target, merged)
            resource = await self._replace(target, doc, current, dry_run)
            return _json(to_kube(resource))

        return await self._merged(target, body, write)

    async def delete(self, request: web.Request) -> web.StreamResponse:
        target = self._target(request)
        dry_run = _dry_run(request)
        raw = await request.read()
        options = parse_json(raw) if raw.strip() else {}
        if not isinstance(options, dict):
            raise KubeError(400, "BadRequest", "the body must be DeleteOptions")
        if options.get("dryRun"):
            if options["dryRun"] != ["All"]:
                raise InvalidArgument.field("dryRun", "unsupported value")
            dry_run = True
        preconditions = options.get("preconditions") or {}
        rv = (
            preconditions.get("resourceVersion")
            if isinstance(preconditions, dict)
            else ""
        )
        kind = target.kind
        if dry_run:
            resource = await self.service.get(kind.name, target.namespace, target.name)
        else:
            resource = await self.service.delete(
                kind.name, target.namespace, target.name, str(rv or "")
            )
        return _json(to_kube(resource))

    # ------------------------------------------------------------------ status

    async def _write_status(
        self,
        target: _Target,
        status: Any,
        resource_version: str,
        current: pb.Resource | None,
        dry_run: bool,
    ) -> web.StreamResponse:
        kind = target.kind
        errors = ViolationCollector()
        structure.check_message({"status": status}, kind.message.DESCRIPTOR, "", errors)
        errors.raise_if_any()
        obj = kind.message()
        json_format.ParseDict({"status": status or {}}, obj)
        obj.metadata.name = target.name
        obj.metadata.namespace = target.namespace
        obj.metadata.resource_version = resource_version
        if dry_run:
            if current is None:
                current = await self.service.get(
                    kind.name, target.namespace, target.name
                )
            shown = unwrap(current)
            shown.ClearField("status")
            shown.status.ParseFromString(obj.status.SerializeToString())
            return _json(to_kube(current))
        return _json(to_kube(await self.service.update_status(wrap(obj))))

    async def update_status(self, request: web.Request) -> web.StreamResponse:
        target = self._target(request)
        dry_run = _dry_run(request)
        doc = self._prepare(target, await self._body(request))
        rv = doc["metadata"].get("resourceVersion") or ""
        return await self._write_status(
            target, doc.get("status"), str(rv), None, dry_run
        )

    async def patch_status(self, request: web.Request) -> web.StreamResponse:
        target = self._target(request)
        dry_run = _dry_run(request)
        patch_type = self._patch_type(request)
        body = await self._body(request)
        if patch_type == APPLY_PATCH:
            doc = self._prepare(target, body)
            rv = doc["metadata"].get("resourceVersion") or ""
            return await self._write_status(
                target, doc.get("status"), str(rv), None, dry_run
            )

        async def write(
            merged: dict[str, Any], current: pb.Resource
        ) -> web.StreamResponse:
            rv = unwrap(current).metadata.resource_version
            pinned = (
                body.get("metadata", {}).get("resourceVersion")
                if isinstance(body.get("metadata"), dict)
                else None
            )
            return await self._write_status(
                target, merged.get("status"), str(pinned or rv), current, dry_run
            )

        return await self._merged(target, body, write)


@dataclass
class KubeServer:
    runner: web.AppRunner
    port: int
    tls: bool

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_kube_server(
    service: RegistryService,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
    shutdown_timeout_s: float = 10.0,
    auth: KubeAuth | None = None,
) -> KubeServer:
    """Serve the Kubernetes API of ``service`` on ``host:port`` (0: a free port).
    A client that goes away cancels its request (a watch ends at once); on stop,
    requests in flight get ``shutdown_timeout_s``. ``auth``: who may call (None:
    anyone, as anonymous)."""
    runner = web.AppRunner(
        KubeApi(service, auth=auth).app(),
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=shutdown_timeout_s,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
        await site.start()
        bound = int(runner.addresses[0][1])
    except BaseException:
        await runner.cleanup()
        raise
    return KubeServer(runner, bound, ssl_context is not None)
