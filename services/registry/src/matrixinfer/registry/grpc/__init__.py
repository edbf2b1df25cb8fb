"""The registry's gRPC layer: convert requests, delegate to the domain, convert back."""
