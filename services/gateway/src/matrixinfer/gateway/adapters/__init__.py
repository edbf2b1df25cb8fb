"""One wrapper per outside system the gateway talks to: HAProxy (the data plane,
with its Lua), the autoscaler (activation and load reports), the Triton replicas'
gRPC channels, the registry's informer (which feeds the routing table and the API
keys), a JWKS endpoint, and the Prometheus and OpenTelemetry exposition of the
proxy path. Each fits an interface of :mod:`matrixinfer.gateway.domain` or is
wired in by :mod:`matrixinfer.gateway.main`."""
