"""Runtimes run replicas: ``local`` (tritonserver processes on this machine) now,
``kubernetes`` (Deployments, Services, EndpointSlices) next, behind one interface."""
