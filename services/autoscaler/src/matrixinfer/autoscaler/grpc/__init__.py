"""The autoscaler's gRPC layer: check requests, delegate to the domain and the
gateway-report adapter, convert back."""
