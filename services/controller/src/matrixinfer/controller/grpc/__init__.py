"""The controller's gRPC layer."""
