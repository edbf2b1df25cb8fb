"""One wrapper per outside system the controller drives: the local runtime
(``tritonserver`` processes on this machine), the artifact stores and fetcher, and
the Prometheus service discovery file. Each fits an interface of
:mod:`matrixinfer.controller.domain`; the registry client and informer of
:mod:`matrixinfer.core.registry` fit its ports as they are."""
