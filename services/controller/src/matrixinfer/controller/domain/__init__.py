"""Controller domain: reconciling ModelInfer into replicas. Plain async Python over
the ports in :mod:`matrixinfer.controller.domain.ports` and the runtime interface in
:mod:`matrixinfer.controller.domain.runtime`; no gRPC here.

:class:`~matrixinfer.controller.domain.service.ControllerService` is what the
Controller API offers (Scale, GetReplicas, GetLogs);
:class:`~matrixinfer.controller.domain.loop.ControllerLoop` turns events into
reconciles of one ModelInfer each
(:class:`~matrixinfer.controller.domain.reconciler.Reconciler`).
"""
