"""Controller benchmark: cold start, rollout, reconcile throughput."""
