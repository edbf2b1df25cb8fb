"""MatrixInfer autoscaler: replica counts from live load (built in the autoscaler issue)."""
