"""The Autoscaler gRPC servicer: gateways stream load reports (checked, then handed
to the gateway-report adapter) and ask for activation (delegated to the domain's
loop); errors are mapped to status codes by matrixinfer.core's interceptor."""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator

import grpc

from matrixinfer.api.v1 import autoscaler_pb2 as apb
from matrixinfer.api.v1 import autoscaler_pb2_grpc
from matrixinfer.autoscaler.adapters.gateway import GatewayLoad
from matrixinfer.autoscaler.domain.loop import Autoscaler
from matrixinfer.core.errors import InvalidArgument

_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
MAX_MODELS_PER_REPORT = 10_000


def _check_report(report: apb.LoadReport) -> None:
    if not report.gateway_id or len(report.gateway_id) > 128:
        raise InvalidArgument.field("gateway_id", "required, at most 128 characters")
    if not (math.isfinite(report.window_seconds) and report.window_seconds > 0):
        raise InvalidArgument.field("window_seconds", "must be a number above 0")
    if len(report.models) > MAX_MODELS_PER_REPORT:
        raise InvalidArgument.field(
            "models", f"at most {MAX_MODELS_PER_REPORT} per report"
        )
    for i, model in enumerate(report.models):
        for name, value in (
            ("namespace", model.namespace or "default"),
            ("model_infer", model.model_infer),
        ):
            if not _NAME.fullmatch(value):
                raise InvalidArgument.field(
                    f"models[{i}].{name}", "must be a DNS-1123 name"
                )
        if (
            not math.isfinite(model.in_flight)
            or min(model.in_flight, model.arrivals, model.held) < 0
        ):
            raise InvalidArgument.field(
                f"models[{i}]", "in_flight, arrivals and held must be finite and >= 0"
            )


class AutoscalerServicer(autoscaler_pb2_grpc.AutoscalerServicer):
    def __init__(self, autoscaler: Autoscaler, gateways: GatewayLoad) -> None:
        self.autoscaler = autoscaler
        self.gateways = gateways

    async def ReportLoad(
        self,
        request_iterator: AsyncIterator[apb.LoadReport],
        context: grpc.aio.ServicerContext,
    ) -> apb.ReportLoadResponse:
        gateway_ids: set[str] = set()
        try:
            async for report in request_iterator:
                _check_report(report)
                gateway_ids.add(report.gateway_id)
                self.gateways.ingest(report)
        finally:
            for gateway_id in gateway_ids:
                self.gateways.forget(gateway_id)
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
