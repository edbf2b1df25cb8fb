"""The metric types an AutoscalingPolicy can name, and where each comes from."""

from __future__ import annotations

Key = tuple[str, str]  # (namespace, ModelInfer name)

CONCURRENCY = "Concurrency"
RPS = "RequestsPerSecond"
PENDING = "PendingRequests"
QUEUE_TIME = "QueueTimeMs"
GPU = "GpuUtilization"

# Reported by the gateways.
GATEWAY_METRICS = (CONCURRENCY, RPS)
# Scraped from the replicas' Triton metrics (GPU also from Prometheus).
TRITON_METRICS = (PENDING, QUEUE_TIME, GPU)

# Totals whose target is per replica: ceil(average / target).
PER_REPLICA_METRICS = frozenset({CONCURRENCY, RPS, PENDING})
# Averages over requests or replicas: ceil(ready * average / target).
RATIO_METRICS = frozenset({QUEUE_TIME, GPU})
METRIC_TYPES = PER_REPLICA_METRICS | RATIO_METRICS
