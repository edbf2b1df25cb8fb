"""The registry's Kubernetes API surface: the REST paths kubectl, client-go and the
kubernetes Python client use, for the registry's kinds, over the same domain service
the gRPC API calls (docs/kubernetes-api.md)."""
