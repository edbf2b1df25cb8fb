"""Controller domain: reconciling ModelInfer into replicas (no gRPC here)."""
