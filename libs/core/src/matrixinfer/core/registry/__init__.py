"""Talking to the registry from other services: a client with deadlines and our
errors, and an informer (a cache kept current by Watch). The controller and the
gateway both build on these."""
