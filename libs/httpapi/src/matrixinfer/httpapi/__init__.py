"""HTTP/JSON in front of gRPC services: ``google.api.http`` transcoding
(:mod:`.transcoding`), strict JSON bodies (:mod:`.jsonbody`) and OpenAPI 3.0
operations derived from the same bindings (:mod:`.openapi`)."""
