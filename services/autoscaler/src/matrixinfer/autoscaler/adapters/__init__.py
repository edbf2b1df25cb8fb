"""One wrapper per outside system the autoscaler talks to: the controller, the
gateways' load reports, the replicas' Triton metrics, a Prometheus server, and the
Prometheus exposition of the autoscaler's own metrics. Each fits a port of
:mod:`matrixinfer.autoscaler.domain.ports`."""
