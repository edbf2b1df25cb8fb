"""The KServe v2 / Triton gRPC messages (``inference.GRPCInferenceService``), as
tritonclient generates them. Other packages import them from here, so tritonclient
stays behind this one adapter package."""

from tritonclient.grpc import service_pb2, service_pb2_grpc

__all__ = ["service_pb2", "service_pb2_grpc"]
