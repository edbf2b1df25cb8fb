"""The gateway's gRPC surface: ``inference.GRPCInferenceService``, served on raw
bytes (:mod:`matrixinfer.gateway.grpc.proxy`), whose call path the HTTP surface
(:mod:`matrixinfer.gateway.http`) shares."""
