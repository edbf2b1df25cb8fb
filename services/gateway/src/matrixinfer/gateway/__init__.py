"""MatrixInfer gateway: the KServe v2 data plane (built in the gateway issue)."""
