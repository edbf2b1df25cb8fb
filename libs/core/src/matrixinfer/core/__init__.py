"""Plumbing every MatrixInfer service shares: settings, logging, metrics, tracing,
gRPC server/client bootstrap and the error hierarchy."""
