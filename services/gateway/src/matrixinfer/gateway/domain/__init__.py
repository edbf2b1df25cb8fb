"""Gateway domain: the routing table and its rule matching, replica balancing, who
may call what (API keys, JWTs, scopes), the tensor checks, the generate mapping, the
KServe v2 wire-format reads and rewrites, and the per-model load counters. Plain
Python over the ports in :mod:`matrixinfer.gateway.domain.ports`; no gRPC, no
aiohttp, no HAProxy.
"""
