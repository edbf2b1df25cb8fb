"""Registry gRPC servicer. Each method converts, delegates to RegistryService and
converts back; errors are mapped to status codes by matrixinfer.core's interceptor."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.api.v1 import registry_pb2_grpc as rpb_grpc
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.registry.domain.audit import AuditEntry
from matrixinfer.registry.domain.kinds import unwrap
from matrixinfer.registry.domain.service import RegistryService
from matrixinfer.registry.grpc.auth import Authorizer


class RegistryServicer(rpb_grpc.RegistryServicer):
    def __init__(
        self, service: RegistryService, authorizer: Authorizer | None = None
    ) -> None:
        self.service = service
        # Scope checks (grpc/auth.py); off unless the registry enforces auth.
        self.auth = authorizer or Authorizer(enforce=False)

    async def Apply(
        self, request: rpb.ApplyRequest, context: grpc.aio.ServicerContext
    ) -> rpb.ApplyResponse:
        self.auth.apply(request)
        outcomes = await self.service.apply(
            request.manifest,
            list(request.resources),
            dry_run=request.dry_run,
            create_only=request.create_only,
        )
        return rpb.ApplyResponse(
            results=[
                rpb.ApplyResult(action=o.action, resource=o.resource) for o in outcomes
            ]
        )

    async def Get(
        self, request: rpb.GetRequest, context: grpc.aio.ServicerContext
    ) -> pb.Resource:
        self.auth.read(request.kind, request.namespace)
        return await self.service.get(request.kind, request.namespace, request.name)

    async def List(
        self, request: rpb.ListRequest, context: grpc.aio.ServicerContext
    ) -> rpb.ListResponse:
        self.auth.read(request.kind, request.namespace, all_namespaces=True)
        items, rv, token = await self.service.list(
            request.kind,
            request.namespace,
            request.label_selector,
            request.limit,
            getattr(request, "continue"),
        )
        response = rpb.ListResponse(items=items, resource_version=str(rv))
        setattr(response, "continue", token)  # noqa: B010 - `continue` is a keyword
        return response

    async def Delete(
        self, request: rpb.DeleteRequest, context: grpc.aio.ServicerContext
    ) -> pb.Resource:
        self.auth.write(
            request.kind,
            request.namespace,
            f"delete {request.kind} in namespace {request.namespace or 'default'}",
        )
        return await self.service.delete(
            request.kind, request.namespace, request.name, request.resource_version
        )

    async def Watch(
        self, request: rpb.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpb.WatchEvent]:
        self.auth.read(request.kind, request.namespace, all_namespaces=True)
        async for item in self.service.watch(
            request.kind,
            request.namespace,
            request.label_selector,
            request.resource_version,
            request.send_initial_events,
            request.allow_bookmarks,
        ):
            event = rpb.WatchEvent(
                type=item.type,
                resource_version=str(item.resource_version),
                initial_events_end=item.initial_events_end,
            )
            if item.resource is not None:
                event.object.CopyFrom(item.resource)
            yield event

    async def UpdateStatus(
        self, request: rpb.UpdateStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.Resource:
        resource = request.resource
        obj = unwrap(resource, "resource")
        # The REST path carries kind/namespace/name outside the body.
        if request.name and not obj.metadata.name:
            obj.metadata.name = request.name
        if request.namespace and not obj.metadata.namespace:
            obj.metadata.namespace = request.namespace
        self.auth.status(
            obj.kind, obj.metadata.namespace, f"update the status of {obj.kind}"
        )
        return await self.service.update_status(resource)

    async def UpdateFinalizers(
        self, request: rpb.UpdateFinalizersRequest, context: grpc.aio.ServicerContext
    ) -> pb.Resource:
        self.auth.status(
            request.kind, request.namespace, f"update finalizers of {request.kind}"
        )
        return await self.service.update_finalizers(
            request.kind,
            request.namespace,
            request.name,
            list(request.add),
            list(request.remove),
        )

    async def CreateApiKey(
        self, request: rpb.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> rpb.CreateApiKeyResponse:
        self.auth.admin("create API keys")
        resource, secret = await self.service.create_api_key(
            request.namespace,
            request.subject,
            list(request.scopes),
            request.tenant,
            request.expires_at,
        )
        return rpb.CreateApiKeyResponse(api_key=resource.api_key, secret=secret)

    async def RevokeApiKey(
        self, request: rpb.RevokeApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.Resource:
        self.auth.admin("revoke API keys")
        return await self.service.revoke_api_key(request.namespace, request.name)

    async def ListRevisions(
        self, request: rpb.ListRevisionsRequest, context: grpc.aio.ServicerContext
    ) -> rpb.ListRevisionsResponse:
        self.auth.read("Model", request.namespace)
        revisions = await self.service.list_revisions(request.namespace, request.name)
        response = rpb.ListRevisionsResponse()
        for revision in revisions:
            created = Timestamp()
            created.FromNanoseconds(int(revision.created_s * 1e9))
            response.revisions.add(
                revision=revision.revision,
                model=revision.resource.model,
                created=created,
            )
        return response

    async def Rollback(
        self, request: rpb.RollbackRequest, context: grpc.aio.ServicerContext
    ) -> pb.Resource:
        self.auth.write(
            "Model",
            request.namespace,
            f"roll back Model in namespace {request.namespace or 'default'}",
        )
        outcome = await self.service.rollback(
            request.namespace, request.name, request.revision
        )
        return outcome.resource

    async def ListAuditEntries(
        self, request: rpb.ListAuditEntriesRequest, context: grpc.aio.ServicerContext
    ) -> rpb.ListAuditEntriesResponse:
        self.auth.admin("read the audit log")
        entries, token = await self.service.list_audit(
            kind=request.kind,
            namespace=request.namespace,
            name=request.name,
            actor=request.actor,
            since=request.since,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return rpb.ListAuditEntriesResponse(
            entries=[_audit_entry(e) for e in entries], next_page_token=token
        )

    async def VerifyAuditLog(
        self, request: rpb.VerifyAuditLogRequest, context: grpc.aio.ServicerContext
    ) -> rpb.VerifyAuditLogResponse:
        self.auth.admin("verify the audit log")
        result = await self.service.verify_audit()
        return rpb.VerifyAuditLogResponse(
            intact=result.intact,
            entries=result.entries,
            first_broken_seq=result.first_broken_seq,
            reason=result.reason,
        )


def _audit_entry(entry: AuditEntry) -> rpb.AuditEntry:
    return rpb.AuditEntry(**entry.as_dict())
