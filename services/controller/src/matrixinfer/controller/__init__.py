"""MatrixInfer controller: reconciles ModelInfer into running Triton replicas (built in the controller issue)."""
