"""Autoscaler domain logic: plain async Python over the ports in
:mod:`matrixinfer.autoscaler.domain.ports`; no grpc, no HTTP.

The decision (:func:`matrixinfer.autoscaler.domain.decision.decide`) is a pipeline
of pure stages (:mod:`matrixinfer.autoscaler.domain.stages`); the loop
(:class:`matrixinfer.autoscaler.domain.loop.Autoscaler`) feeds it and acts on it.
The design is described in ``docs/autoscaler.md``.
"""
