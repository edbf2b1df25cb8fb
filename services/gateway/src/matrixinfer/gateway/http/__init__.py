"""The gateway's HTTP surface (aiohttp), beside the gRPC one: KServe v2 REST and
Triton's generate extension transcoded onto the gRPC call path, the registry's admin
API transcoded from its ``google.api.http`` annotations, and ``/openapi.json``."""
