"""The registry's behaviour: apply, read, delete, status, finalizers, revisions, watch.

Plain async Python over the Store interface. Conflicting concurrent writers are
detected by compare-and-set on resourceVersion: a write without a resourceVersion from
the caller is retried on a fresh read, one with a stale resourceVersion fails ABORTED.

Every write is recorded in the audit log (``audit.py``) in its own transaction, and
every refused write in a transaction of its own.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import json
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from matrixinfer.api.envelope import metadata_of
from matrixinfer.api.envelope import wrap as wrap_object
from matrixinfer.api.kinds import BY_NAME, Kind, Object, kind_of
from matrixinfer.api.timestamps import now_rfc3339
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.core import identity
from matrixinfer.core.apikeys import api_key_id, generate_api_key
from matrixinfer.core.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ViolationCollector,
)
from matrixinfer.core.tasks import Uninterrupted
from matrixinfer.registry.domain import admission, audit
from matrixinfer.registry.domain.audit import AuditEntry, AuditQuery, Verification
from matrixinfer.registry.domain.kinds import resolve_kind
from matrixinfer.registry.domain.kinds import unwrap as unwrap_resource
from matrixinfer.registry.domain.manifest import parse_manifest
from matrixinfer.registry.domain.selectors import Selector, parse_selector
from matrixinfer.registry.domain.store import (
    Change,
    Event,
    Revision,
    Store,
    StoreConflict,
    Transaction,
)
from matrixinfer.registry.domain.watch import Subscription, WatchHub

T = TypeVar("T")

DEFAULT_PAGE = 500
MAX_PAGE = 1000
MAX_WRITE_ATTEMPTS = 10
MAX_STATUS_BYTES = 1 << 20
_RV = re.compile(r"[0-9]{1,19}")


@dataclass(frozen=True)
class WriteKind:
    """How the audit log names a request's writes: ``refused`` when the request is
    refused (what it would have written is unknown), else by each write's store op
    (insert, update, delete), ``refused`` for ops not listed."""

    refused: str
    by_op: Mapping[str, str]

    def action(self, op: str) -> str:
        return self.by_op.get(op, self.refused)


APPLY = WriteKind("apply", {"insert": "create", "update": "update"})
DELETE = WriteKind("delete", {})
UPDATE_FINALIZERS = WriteKind("update-finalizers", {"delete": "delete"})
UPDATE_STATUS = WriteKind("update-status", {})
ROLLBACK = WriteKind("rollback", {})
CREATE_API_KEY = WriteKind("create-apikey", {})
REVOKE_API_KEY = WriteKind("revoke-apikey", {})
Target = tuple[str, str, str]  # kind, namespace, name


def parse_rv(value: str, field: str = "resourceVersion") -> int:
    if not value:
        return 0
    if not _RV.fullmatch(value) or int(value) > 2**63 - 1:
        raise InvalidArgument.field(
            field, "must be a resourceVersion the registry returned"
        )
    return int(value)


@dataclass(frozen=True)
class ApplyOutcome:
    action: str  # created | configured | unchanged
    resource: pb.Resource


@dataclass(frozen=True)
class WatchItem:
    type: str
    resource: pb.Resource | None
    resource_version: int
    initial_events_end: bool = False


class RegistryService:
    def __init__(self, store: Store, hub: WatchHub, bookmark_interval_s: float = 30.0):
        self.store = store
        self.hub = hub
        self.bookmark_interval_s = bookmark_interval_s
        self._work = Uninterrupted()

    # ------------------------------------------------------------------ writes

    async def _write(
        self,
        fn: Callable[[Transaction], Awaitable[T]],
        retry: bool,
        kind: WriteKind,
    ) -> T:
        """Run ``fn`` in a transaction, again on StoreConflict when ``retry``. Each
        write ``fn`` makes gets its audit entry in the same transaction. A write
        whose caller goes away meanwhile still commits or rolls back whole
        (core/tasks.py)."""
        return await self._work.run(self._write_now(fn, retry, kind))

    async def _write_now(
        self,
        fn: Callable[[Transaction], Awaitable[T]],
        retry: bool,
        kind: WriteKind,
    ) -> T:
        for attempt in range(MAX_WRITE_ATTEMPTS):
            try:
                async with self.store.transaction() as tx:
                    audited = _AuditedTransaction(tx, kind)
                    result = await fn(audited)
                    entries = await tx.append_audit(audited.records)
            except StoreConflict:
                if not retry or attempt == MAX_WRITE_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
            else:
                for entry in entries:
                    audit.log_entry(entry)
                return result
        raise AssertionError("unreachable")

    async def _refused(
        self, kind: WriteKind, targets: Sequence[Target], error: Exception
    ) -> None:
        """Record a refused write (in a transaction of its own: the refused one
        wrote nothing). A failure to record is logged; the refusal stands."""
        actor = identity.current().name
        records = [
            audit.refusal(actor, kind.refused, k, ns, name, error)
            for k, ns, name in targets
        ]
        try:
            entries = await self._work.run(self._append_audit(records))
        except Exception:
            audit.log.warning("could not record a refused write", exc_info=True)
            return
        for entry in entries:
            audit.log_entry(entry)

    async def _append_audit(
        self, records: Sequence[audit.AuditRecord]
    ) -> list[AuditEntry]:
        async with self.store.transaction() as tx:
            return await tx.append_audit(records)

    async def drain(self, timeout_s: float) -> None:
        """Wait for writes still in flight (their callers may be gone)."""
        await self._work.drain(timeout_s)

    async def _audited(
        self,
        kind: WriteKind,
        targets: Callable[[], Sequence[Target]],
        call: Awaitable[T],
    ) -> T:
        """``call``'s result; a refusal (any exception but cancellation) is recorded
        for ``targets`` before it is raised."""
        try:
            return await call
        except Exception as e:
            await self._refused(kind, targets(), e)
            raise

    async def apply(
        self,
        manifest: str,
        resources: list[pb.Resource],
        *,
        dry_run: bool = False,
        create_only: bool = False,
    ) -> list[ApplyOutcome]:
        call = self._apply(manifest, resources, dry_run, create_only, APPLY)
        if dry_run:
            return await call  # writes nothing: nothing to record
        return await self._audited(
            APPLY, lambda: _manifest_targets(manifest, resources), call
        )

    async def _apply(
        self,
        manifest: str,
        resources: list[pb.Resource],
        dry_run: bool,
        create_only: bool,
        write_kind: WriteKind,
    ) -> list[ApplyOutcome]:
        if manifest and resources:
            raise InvalidArgument.field("manifest", "send either manifest or resources")
        objects: list[Object] = []
        if manifest:
            docs = parse_manifest(manifest)
            for i, doc in enumerate(docs):
                where = f"manifest[{i}]." if len(docs) > 1 else ""
                objects.append(admission.admit(doc, where))
        else:
            if not resources:
                raise InvalidArgument.field("manifest", "nothing to apply")
            for i, resource in enumerate(resources):
                where = f"resources[{i}]." if len(resources) > 1 else ""
                obj = unwrap_resource(resource, f"resources[{i}]")
                objects.append(admission.validate(obj, where, typed=True))
        seen: set[tuple[str, str, str]] = set()
        for i, obj in enumerate(objects):
            key = (kind_of(obj).name, obj.metadata.namespace, obj.metadata.name)
            if key in seen:
                raise InvalidArgument.field(
                    f"manifest[{i}].metadata.name", f"{key[0]} {key[2]!r} appears twice"
                )
            seen.add(key)
        retry = (
            not any(o.metadata.resource_version for o in objects) and not create_only
        )

        async def run(tx: Transaction) -> list[ApplyOutcome]:
            await self._check_references(tx, objects)
            return [
                await self._apply_one(tx, obj, dry_run, create_only) for obj in objects
            ]

        try:
            outcomes = await self._write(run, retry, write_kind)
        except StoreConflict as e:
            if create_only:
                raise AlreadyExists(f"{e}") from e
            raise Conflict(
                f"{e}; the object changed since it was read: get it again and reapply"
            ) from e
        return outcomes

    async def _check_references(self, tx: Transaction, objects: list[Object]) -> None:
        batch = {
            (kind_of(o).name, o.metadata.namespace, o.metadata.name): o for o in objects
        }
        errors = ViolationCollector()

        async def find(kind: str, namespace: str, name: str) -> Object | None:
            if (kind, namespace, name) in batch:
                return batch[(kind, namespace, name)]
            stored = await tx.get(kind, namespace, name)
            return unwrap_resource(stored) if stored is not None else None

        async def need(kind: str, ns: str, name: str, path: str) -> Object | None:
            if not name:
                return None
            found = await find(kind, ns, name)
            if found is None:
                errors.add(path, f"{kind} {name!r} not found in namespace {ns!r}")
            return found

        for i, obj in enumerate(objects):
            p = f"manifest[{i}].spec" if len(objects) > 1 else "spec"
            ns = obj.metadata.namespace
            if isinstance(obj, pb.ModelInfer):
                model = await need(
                    "Model", ns, obj.spec.model_ref.name, f"{p}.modelRef.name"
                )
                wanted = obj.spec.model_ref.revision
                if isinstance(model, pb.Model) and wanted:
                    stored = await tx.get("Model", ns, obj.spec.model_ref.name)
                    newest = stored.model.status.current_revision if stored else 0
                    if model is batch.get(("Model", ns, obj.spec.model_ref.name)):
                        newest += 1  # the batch may add a revision
                    if wanted > newest:
                        errors.add(
                            f"{p}.modelRef.revision",
                            f"Model {model.metadata.name!r} has no revision {wanted}",
                        )
            elif isinstance(obj, pb.ModelServer):
                await need(
                    "ModelInfer", ns, obj.spec.model_infer_ref, f"{p}.modelInferRef"
                )
            elif isinstance(obj, pb.ModelRoute):
                for r, rule in enumerate(obj.spec.rules):
                    for t, target in enumerate(rule.targets):
                        path = f"{p}.rules[{r}].targets[{t}].modelServer"
                        await need("ModelServer", ns, target.model_server, path)
                    if rule.HasField("mirror"):
                        path = f"{p}.rules[{r}].mirror.modelServer"
                        await need("ModelServer", ns, rule.mirror.model_server, path)
            elif isinstance(obj, pb.AutoscalingPolicy):
                await need(
                    "ModelInfer", ns, obj.spec.target_ref.name, f"{p}.targetRef.name"
                )
        errors.raise_if_any()

    async def _apply_one(
        self, tx: Transaction, wanted: Object, dry_run: bool, create_only: bool
    ) -> ApplyOutcome:
        # A copy per attempt: a retried transaction must start from the request again.
        obj = copy.deepcopy(wanted)
        kind = kind_of(obj)
        meta = obj.metadata
        stored = await tx.get(kind.name, meta.namespace, meta.name)
        wanted_rv = parse_rv(meta.resource_version, "metadata.resourceVersion")
        if stored is None:
            if wanted_rv:
                raise NotFound(
                    f"{kind.name} {meta.namespace}/{meta.name} does not exist; "
                    "remove metadata.resourceVersion to create it"
                )
            return await self._create(tx, kind, obj, dry_run)
        if create_only:
            raise AlreadyExists(
                f"{kind.name} {meta.namespace}/{meta.name} already exists"
            )
        current = unwrap_resource(stored)
        current_rv = int(current.metadata.resource_version)
        if wanted_rv and wanted_rv != current_rv:
            raise _stale(kind.name, meta.namespace, meta.name, current_rv, wanted_rv)
        if current.metadata.deletion_timestamp:
            raise FailedPrecondition(
                f"{kind.name} {meta.namespace}/{meta.name} is being deleted"
            )
        updated = copy.deepcopy(current)
        spec_changed = updated.spec != obj.spec
        _copy_field(updated, obj, "spec")
        m = updated.metadata
        m.labels.clear()
        m.labels.update(obj.metadata.labels)
        m.annotations.clear()
        m.annotations.update(obj.metadata.annotations)
        for (
            finalizer
        ) in obj.metadata.finalizers:  # Apply adds, UpdateFinalizers removes
            if finalizer not in m.finalizers:
                m.finalizers.append(finalizer)
        if not spec_changed and updated.metadata == current.metadata:
            return ApplyOutcome("unchanged", stored)
        if dry_run:
            return ApplyOutcome("configured", wrap_object(updated))
        if spec_changed:
            m.generation += 1
            if isinstance(updated, pb.Model):
                updated.status.current_revision += 1
        resource = await _commit(
            tx, "update", kind, updated, current_rv, revision=spec_changed
        )
        return ApplyOutcome("configured", resource)

    async def _create(
        self, tx: Transaction, kind: Kind, obj: Object, dry_run: bool
    ) -> ApplyOutcome:
        meta = obj.metadata
        meta.uid = str(uuid.uuid4())
        meta.generation = 1
        meta.creation_timestamp = now_rfc3339("milliseconds")
        if isinstance(obj, pb.Model):
            obj.status.current_revision = 1
        if dry_run:
            return ApplyOutcome("created", wrap_object(obj))
        resource = await _commit(tx, "insert", kind, obj, 0, revision=True)
        return ApplyOutcome("created", resource)

    async def delete(
        self, kind_name: str, namespace: str, name: str, precondition_rv: str
    ) -> pb.Resource:
        namespace = namespace or "default"
        return await self._audited(
            DELETE,
            lambda: [(_kind_name(kind_name), namespace, name)],
            self._delete(kind_name, namespace, name, precondition_rv),
        )

    async def _delete(
        self, kind_name: str, namespace: str, name: str, precondition_rv: str
    ) -> pb.Resource:
        kind = resolve_kind(kind_name)
        wanted_rv = parse_rv(precondition_rv)

        async def run(tx: Transaction) -> pb.Resource:
            stored, obj, current_rv = await _load(tx, kind, namespace, name, wanted_rv)
            if obj.metadata.finalizers:
                if obj.metadata.deletion_timestamp:
                    return stored  # already being deleted
                obj.metadata.deletion_timestamp = now_rfc3339("milliseconds")
                return await _commit(tx, "update", kind, obj, current_rv)
            return await self._remove(tx, kind, obj, current_rv)

        return await self._write(run, not wanted_rv, DELETE)

    async def _remove(
        self, tx: Transaction, kind: Kind, obj: Object, current_rv: int
    ) -> pb.Resource:
        if not obj.metadata.deletion_timestamp:
            obj.metadata.deletion_timestamp = now_rfc3339("milliseconds")
        return await _commit(tx, "delete", kind, obj, current_rv)

    async def update_finalizers(
        self,
        kind_name: str,
        namespace: str,
        name: str,
        add: list[str],
        remove: list[str],
    ) -> pb.Resource:
        namespace = namespace or "default"
        return await self._audited(
            UPDATE_FINALIZERS,
            lambda: [(_kind_name(kind_name), namespace, name)],
            self._update_finalizers(kind_name, namespace, name, add, remove),
        )

    async def _update_finalizers(
        self,
        kind_name: str,
        namespace: str,
        name: str,
        add: list[str],
        remove: list[str],
    ) -> pb.Resource:
        kind = resolve_kind(kind_name)
        admission.check_finalizers(add, "add")

        async def run(tx: Transaction) -> pb.Resource:
            stored, obj, current_rv = await _load(tx, kind, namespace, name, 0)
            finalizers = [f for f in obj.metadata.finalizers if f not in remove]
            if obj.metadata.deletion_timestamp and add:
                raise FailedPrecondition(
                    f"{kind.name} {namespace}/{name} is being deleted; "
                    "finalizers can only be removed"
                )
            finalizers += [f for f in dict.fromkeys(add) if f not in finalizers]
            if finalizers == list(obj.metadata.finalizers):
                return stored
            del obj.metadata.finalizers[:]
            obj.metadata.finalizers.extend(finalizers)
            if obj.metadata.deletion_timestamp and not finalizers:
                return await self._remove(tx, kind, obj, current_rv)
            return await _commit(tx, "update", kind, obj, current_rv)

        return await self._write(run, True, UPDATE_FINALIZERS)

    async def update_status(self, resource: pb.Resource) -> pb.Resource:
        return await self._audited(
            UPDATE_STATUS,
            lambda: [_resource_target(resource)],
            self._update_status(resource),
        )

    async def _update_status(self, resource: pb.Resource) -> pb.Resource:
        obj = unwrap_resource(resource)
        kind = kind_of(obj)
        namespace = obj.metadata.namespace or "default"
        name = obj.metadata.name
        errors = ViolationCollector()
        admission.check_name(name, "resource.metadata.name", errors)
        admission.check_name(namespace, "resource.metadata.namespace", errors)
        errors.raise_if_any()
        if obj.status.ByteSize() > MAX_STATUS_BYTES:
            raise InvalidArgument.field(
                "resource.status", f"larger than {MAX_STATUS_BYTES} bytes"
            )
        wanted_rv = parse_rv(
            obj.metadata.resource_version, "resource.metadata.resourceVersion"
        )

        async def run(tx: Transaction) -> pb.Resource:
            stored, current, current_rv = await _load(
                tx, kind, namespace, name, wanted_rv
            )
            updated = copy.deepcopy(current)
            _copy_field(updated, obj, "status")
            if isinstance(updated, pb.Model) and isinstance(current, pb.Model):
                # The registry owns the revision counter.
                updated.status.current_revision = current.status.current_revision
            if updated.status == current.status:
                return stored
            return await _commit(tx, "update", kind, updated, current_rv)

        return await self._write(run, not wanted_rv, UPDATE_STATUS)

    # ------------------------------------------------------------------ API keys

    async def create_api_key(
        self,
        namespace: str,
        subject: str,
        scopes: list[str],
        tenant: str,
        expires_at: str,
    ) -> tuple[pb.Resource, str]:
        """A new key: the secret is returned here once and stored nowhere."""
        namespace = namespace or "default"
        return await self._audited(
            CREATE_API_KEY,
            lambda: [("ApiKey", namespace, "")],
            self._create_api_key(namespace, subject, scopes, tenant, expires_at),
        )

    async def _create_api_key(
        self,
        namespace: str,
        subject: str,
        scopes: list[str],
        tenant: str,
        expires_at: str,
    ) -> tuple[pb.Resource, str]:
        admission.check_api_key_request(namespace, subject, scopes, tenant, expires_at)
        secret, digest = generate_api_key()
        key_id = api_key_id(secret)
        assert key_id is not None
        key_kind = BY_NAME["ApiKey"]
        key = pb.ApiKey(api_version=key_kind.api_version, kind=key_kind.name)
        key.metadata.name = key_id
        key.metadata.namespace = namespace
        key.spec.subject = subject
        key.spec.scopes.extend(dict.fromkeys(scopes))
        key.spec.tenant = tenant
        key.spec.hash = digest
        key.spec.expires_at = expires_at

        async def run(tx: Transaction) -> ApplyOutcome:
            return await self._apply_one(tx, key, False, True)

        outcome = await self._write(run, False, CREATE_API_KEY)
        return outcome.resource, secret

    async def revoke_api_key(self, namespace: str, name: str) -> pb.Resource:
        namespace = namespace or "default"
        return await self._audited(
            REVOKE_API_KEY,
            lambda: [("ApiKey", namespace, name)],
            self._revoke_api_key(namespace, name),
        )

    async def _revoke_api_key(self, namespace: str, name: str) -> pb.Resource:
        kind = BY_NAME["ApiKey"]

        async def run(tx: Transaction) -> pb.Resource:
            stored, obj, current_rv = await _load(tx, kind, namespace, name, 0)
            assert isinstance(obj, pb.ApiKey)
            if obj.spec.revoked:
                return stored
            obj.spec.revoked = True
            obj.metadata.generation += 1
            return await _commit(tx, "update", kind, obj, current_rv)

        return await self._write(run, True, REVOKE_API_KEY)

    # ------------------------------------------------------------------ revisions

    async def list_revisions(self, namespace: str, name: str) -> list[Revision]:
        namespace = namespace or "default"
        stored = await self.store.get("Model", namespace, name)
        if stored is None:
            raise NotFound(f"Model {namespace}/{name} not found")
        return await self.store.list_revisions(unwrap_resource(stored).metadata.uid)

    async def rollback(self, namespace: str, name: str, revision: int) -> ApplyOutcome:
        namespace = namespace or "default"
        return await self._audited(
            ROLLBACK,
            lambda: [("Model", namespace, name)],
            self._rollback(namespace, name, revision),
        )

    async def _rollback(self, namespace: str, name: str, revision: int) -> ApplyOutcome:
        if revision <= 0:
            raise InvalidArgument.field(
                "revision", "must be a revision number (1 or more)"
            )
        revisions = {r.revision: r for r in await self.list_revisions(namespace, name)}
        if revision not in revisions:
            raise NotFound(
                f"Model {namespace}/{name} has no revision {revision}; "
                f"it has {sorted(revisions)}"
            )
        old = revisions[revision].resource.model
        target = copy.deepcopy((await self.get("Model", namespace, name)).model)
        target.spec.CopyFrom(old.spec)
        target.metadata.resource_version = ""
        outcomes = await self._apply("", [wrap_object(target)], False, False, ROLLBACK)
        return outcomes[0]

    # ------------------------------------------------------------------ audit log

    async def list_audit(
        self,
        kind: str = "",
        namespace: str = "",
        name: str = "",
        actor: str = "",
        since: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[AuditEntry], str]:
        """Audit entries, oldest first, matching every non-empty filter; the token
        of the next page ("" on the last)."""
        if page_size < 0 or page_size > MAX_PAGE:
            raise InvalidArgument.field(
                "page_size", f"must be 0 (default {DEFAULT_PAGE}) ..{MAX_PAGE}"
            )
        limit = page_size or DEFAULT_PAGE
        after = 0
        if page_token:
            if not _RV.fullmatch(page_token):
                raise InvalidArgument.field(
                    "page_token", "not a page token from this list; start again"
                )
            after = int(page_token)
        query = AuditQuery(
            kind=_kind_name(kind) if kind else "",
            namespace=namespace,
            name=name,
            actor=actor,
            since=audit.parse_since(since),
            after=after,
            limit=limit + 1,
        )
        entries = await self.store.audit_entries(query)
        if len(entries) > limit:
            return entries[:limit], str(entries[limit - 1].seq)
        return entries, ""

    async def verify_audit(self) -> Verification:
        """Walk the whole chain; the first entry that does not verify is named."""
        head = await self.store.audit_head()
        verifier = audit.ChainVerifier()
        after = 0
        while True:
            page = await self.store.audit_entries(
                AuditQuery(after=after, through=head, limit=MAX_PAGE)
            )
            for entry in page:
                if not verifier.feed(entry):
                    return verifier.finish(head)
            if len(page) < MAX_PAGE:
                return verifier.finish(head)
            after = page[-1].seq

    # ------------------------------------------------------------------ reads

    async def get(self, kind_name: str, namespace: str, name: str) -> pb.Resource:
        kind = resolve_kind(kind_name)
        namespace = namespace or "default"
        stored = await self.store.get(kind.name, namespace, name)
        if stored is None:
            raise NotFound(f"{kind.name} {namespace}/{name} not found")
        return stored

    async def list(
        self,
        kind_name: str,
        namespace: str,
        label_selector: str,
        limit: int,
        token: str,
    ) -> tuple[list[pb.Resource], int, str]:
        kind = resolve_kind(kind_name)
        if limit < 0 or limit > MAX_PAGE:
            raise InvalidArgument.field(
                "limit", f"must be 0 (default {DEFAULT_PAGE}) ..{MAX_PAGE}"
            )
        limit = limit or DEFAULT_PAGE
        if namespace:
            errors = ViolationCollector()
            admission.check_name(namespace, "namespace", errors)
            errors.raise_if_any()
        selector = parse_selector(label_selector)
        after: tuple[str, str] | None = None
        if token:
            list_rv, after = _decode_token(token, kind.name, namespace, label_selector)
        else:
            list_rv = await self.store.current_resource_version()
        items: list[pb.Resource] = []
        more = False
        while True:
            page = await self.store.list_page(kind.name, namespace, after, limit + 1)
            for resource in page:
                obj = unwrap_resource(resource)
                after = (obj.metadata.namespace, obj.metadata.name)
                if selector(obj.metadata.labels):
                    if len(items) == limit:
                        more = True
                        break
                    items.append(resource)
            if more or len(page) < limit + 1:
                break
        next_token = ""
        if more and items:
            last = unwrap_resource(items[-1]).metadata
            next_token = _encode_token(
                list_rv,
                (last.namespace, last.name),
                kind.name,
                namespace,
                label_selector,
            )
        return items, list_rv, next_token

    # ------------------------------------------------------------------ watch

    async def watch(
        self,
        kind_name: str,
        namespace: str,
        label_selector: str,
        resource_version: str,
        send_initial_events: bool,
        allow_bookmarks: bool,
    ) -> AsyncIterator[WatchItem]:
        stream = await self.open_watch(
            kind_name,
            namespace,
            label_selector,
            resource_version,
            send_initial_events,
            allow_bookmarks,
        )
        try:
            async for item in stream:
                yield item
        finally:
            stream.close()

    async def open_watch(
        self,
        kind_name: str,
        namespace: str,
        label_selector: str,
        resource_version: str,
        send_initial_events: bool,
        allow_bookmarks: bool,
    ) -> WatchStream:
        """A watch whose start has been checked: a bad or expired resourceVersion
        fails here (InvalidArgument, Expired), before any event is asked for, so a
        surface can answer with an error instead of an empty stream. The caller
        closes it."""
        kind = resolve_kind(kind_name) if kind_name else None
        selector = parse_selector(label_selector)
        start = parse_rv(resource_version)

        def matches(event: Event) -> bool:
            if kind is not None and event.kind != kind.name:
                return False
            if namespace and event.namespace != namespace:
                return False
            return _selected(selector, event.resource)

        initial: list[pb.Resource] = []
        if send_initial_events and not start:
            start = await self.store.current_resource_version()
            for k in [kind] if kind else list(BY_NAME.values()):
                token = ""
                while True:
                    page, _, token = await self.list(
                        k.name, namespace, label_selector, MAX_PAGE, token
                    )
                    initial.extend(page)
                    if not token:
                        break
        else:
            current = await self.store.current_resource_version()
            if not resource_version:
                start = current
            elif start > current:
                raise InvalidArgument.field(
                    "resourceVersion",
                    f"{start} is newer than the registry's ({current}); use one the "
                    "registry returned",
                )
        sub = await self.hub.subscribe(start, matches)
        return WatchStream(
            self,
            sub,
            self._stream(sub, initial, start, send_initial_events, allow_bookmarks),
        )

    async def _stream(
        self,
        sub: Subscription,
        initial: Sequence[pb.Resource],
        start: int,
        send_initial_events: bool,
        allow_bookmarks: bool,
    ) -> AsyncIterator[WatchItem]:
        try:
            for resource in initial:
                rv = int(unwrap_resource(resource).metadata.resource_version or 0)
                yield WatchItem("ADDED", resource, rv)
            if send_initial_events:
                yield WatchItem("BOOKMARK", None, start, initial_events_end=True)
            last = start
            while True:
                try:
                    item = await asyncio.wait_for(
                        sub.queue.get(), self.bookmark_interval_s
                    )
                except TimeoutError:
                    if allow_bookmarks:
                        yield WatchItem("BOOKMARK", None, max(last, sub.last_rv))
                    continue
                if isinstance(item, BaseException):
                    raise item
                last = item.resource_version
                yield WatchItem(item.type, item.resource, item.resource_version)
        finally:
            self.hub.unsubscribe(sub)


class WatchStream:
    """The events of an opened watch; ``close()`` ends the subscription whether or
    not the events were ever iterated."""

    def __init__(
        self,
        service: RegistryService,
        sub: Subscription,
        items: AsyncIterator[WatchItem],
    ) -> None:
        self._hub = service.hub
        self._sub = sub
        self._items = items

    def __aiter__(self) -> AsyncIterator[WatchItem]:
        return self._items

    def close(self) -> None:
        self._hub.unsubscribe(self._sub)


class _AuditedTransaction:
    """A Transaction that records each write for the audit log: who, the action,
    and the change from the object as last read (or written) to the object as
    written."""

    def __init__(self, tx: Transaction, kind: WriteKind) -> None:
        self._tx = tx
        self._kind = kind
        self._seen: dict[Target, pb.Resource | None] = {}
        self.records: list[audit.AuditRecord] = []

    async def get(self, kind: str, namespace: str, name: str) -> pb.Resource | None:
        stored = await self._tx.get(kind, namespace, name)
        self._seen[(kind, namespace, name)] = stored
        return stored

    async def write(self, change: Change) -> Event:
        meta = metadata_of(change.resource)
        key = (change.kind, meta.namespace, meta.name)
        before = self._seen.get(key)
        event = await self._tx.write(change)
        after = None if change.op == "delete" else event.resource
        self._seen[key] = after
        self.records.append(
            audit.record(
                identity.current().name,
                self._kind.action(change.op),
                change.kind,
                meta.namespace,
                meta.name,
                audit.diff(before, after),
            )
        )
        return event

    async def append_audit(
        self, records: Sequence[audit.AuditRecord]
    ) -> list[AuditEntry]:
        return await self._tx.append_audit(records)


def _kind_name(value: str) -> str:
    """The kind's name when ``value`` names one, else ``value`` as given."""
    try:
        return resolve_kind(value).name
    except InvalidArgument:
        return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _manifest_targets(manifest: str, resources: list[pb.Resource]) -> list[Target]:
    """What an Apply meant to write, as far as it can be read: one target per
    document (empty names where the document does not say)."""
    targets: list[Target] = []
    if manifest:
        try:
            docs = parse_manifest(manifest)
        except Exception:
            return [("", "", "")]
        for doc in docs:
            meta = doc.get("metadata")
            meta = meta if isinstance(meta, dict) else {}
            targets.append(
                (
                    _kind_name(_text(doc.get("kind"))),
                    _text(meta.get("namespace")) or "default",
                    _text(meta.get("name")),
                )
            )
    else:
        targets = [_resource_target(r) for r in resources]
    return targets or [("", "", "")]


def _resource_target(resource: pb.Resource) -> Target:
    which = resource.WhichOneof("object")
    if which is None:
        return ("", "", "")
    meta = metadata_of(resource)
    return (
        kind_of(getattr(resource, which)).name,
        meta.namespace or "default",
        meta.name,
    )


_EVENT_TYPES = {"insert": "ADDED", "update": "MODIFIED", "delete": "DELETED"}


async def _commit(
    tx: Transaction,
    op: str,
    kind: Kind,
    obj: Object,
    expected_rv: int,
    *,
    revision: bool = False,
) -> pb.Resource:
    """Write one change with its event (and Model revision); returns the stored
    object carrying the resourceVersion the store assigned."""
    resource = wrap_object(obj)
    snapshot: Revision | None = None
    if revision and isinstance(obj, pb.Model):
        model = copy.deepcopy(obj)
        model.ClearField("status")
        model.status.current_revision = obj.status.current_revision
        model.metadata.resource_version = ""
        snapshot = Revision(
            obj.status.current_revision, wrap_object(model), time.time()
        )
    change = Change(
        op=op,
        event_type=_EVENT_TYPES[op],
        kind=kind.name,
        resource=resource,
        expected_rv=expected_rv,
        revision=snapshot,
        drop_revisions=op == "delete" and kind.has_revisions,
    )
    event = await tx.write(change)
    obj.metadata.resource_version = str(event.resource_version)
    return event.resource


def _copy_field(target: Object, source: Object, name: str) -> None:
    """Copy spec or status between two objects of the same kind."""
    getattr(target, name).CopyFrom(getattr(source, name))


async def _load(
    tx: Transaction, kind: Kind, namespace: str, name: str, wanted_rv: int
) -> tuple[pb.Resource, Object, int]:
    """Read an object for writing; NotFound, or Conflict unless it is at
    ``wanted_rv`` (when given)."""
    stored = await tx.get(kind.name, namespace, name)
    if stored is None:
        raise NotFound(f"{kind.name} {namespace}/{name} not found")
    obj = unwrap_resource(stored)
    current_rv = int(obj.metadata.resource_version)
    if wanted_rv and wanted_rv != current_rv:
        raise _stale(kind.name, namespace, name, current_rv, wanted_rv)
    return stored, obj, current_rv


def _stale(kind: str, namespace: str, name: str, current: int, wanted: int) -> Conflict:
    return Conflict(
        f"{kind} {namespace}/{name} is at resourceVersion {current}, not {wanted}: "
        "get it again and retry"
    )


def _selected(selector: Selector, resource: pb.Resource) -> bool:
    return selector(unwrap_resource(resource).metadata.labels)


def _token_scope(kind: str, namespace: str, selector: str) -> str:
    return f"{kind}|{namespace}|{selector}"


def _encode_token(
    rv: int, after: tuple[str, str], kind: str, namespace: str, selector: str
) -> str:
    body = {
        "v": 1,
        "rv": rv,
        "ns": after[0],
        "n": after[1],
        "s": _token_scope(kind, namespace, selector),
    }
    raw = json.dumps(body, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(
    token: str, kind: str, namespace: str, selector: str
) -> tuple[int, tuple[str, str]]:
    bad = InvalidArgument.field(
        "continue", "not a continue token from this list; start the list again"
    )
    if len(token) > 1024:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        body = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise bad from None
    if (
        not isinstance(body, dict)
        or set(body) != {"v", "rv", "ns", "n", "s"}
        or body["v"] != 1
        or not isinstance(body["rv"], int)
        or isinstance(body["rv"], bool)
        or not 0 <= body["rv"] <= 2**63 - 1
        or not isinstance(body["ns"], str)
        or not isinstance(body["n"], str)
        or body["s"] != _token_scope(kind, namespace, selector)
    ):
        raise bad
    errors = ViolationCollector()
    admission.check_name(body["ns"], "continue", errors)
    admission.check_name(body["n"], "continue", errors)
    if errors.violations:
        raise bad
    return body["rv"], (body["ns"], body["n"])
