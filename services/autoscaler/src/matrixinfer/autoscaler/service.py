"""The Autoscaler gRPC service: gateways stream load reports and ask for activation."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import grpc

from matrixinfer.api.v1 import autoscaler_pb2 as apb
from matrixinfer.api.v1 import autoscaler_pb2_grpc
from matrixinfer.autoscaler.loop import Autoscaler
from matrixinfer.core.errors import InvalidArgument

_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
MAX_MODELS_PER_REPORT = 10_000


class AutoscalerServicer(autoscaler_pb2_grpc.AutoscalerServicer):
    def __init__(self, autoscaler: Autoscaler) -> None:
        self.autoscaler = autoscaler

    async def ReportLoad(
        self,
        request_iterator: AsyncIterator[apb.LoadReport],
        context: grpc.aio.ServicerContext,
    ) -> apb.ReportLoadResponse:
        async for report in request_iterator:
            if not report.gateway_id:
                raise InvalidArgument.field("gateway_id", "required")
            if not report.window_seconds > 0:
                raise InvalidArgument.field("window_seconds", "must be above 0")
            if len(report.models) > MAX_MODELS_PER_REPORT:
                raise InvalidArgument.field(
                    "models", f"at most {MAX_MODELS_PER_REPORT} per report"
                )
            for i, model in enumerate(report.models):
                if model.in_flight < 0 or model.arrivals < 0 or model.held < 0:
                    raise InvalidArgument.field(
                        f"models[{i}]", "in_flight, arrivals and held must be >= 0"
                    )
            self.autoscaler.gateways.ingest(report)
        return apb.ReportLoadResponse()

    async def Activate(
        self, request: apb.ActivateRequest, context: grpc.aio.ServicerContext
    ) -> apb.ActivateResponse:
        namespace = request.namespace or "default"
        for field, value in (
            ("namespace", namespace),
            ("model_infer", request.model_infer),
        ):
            if not _NAME.fullmatch(value):
                raise InvalidArgument.field(
                    field, "required" if not value else "must be a DNS-1123 name"
                )
        replicas = await self.autoscaler.activate(namespace, request.model_infer)
        return apb.ActivateResponse(replicas=replicas)
