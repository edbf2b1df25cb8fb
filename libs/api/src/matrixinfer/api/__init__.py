"""MatrixInfer's contracts: code generated from protos/ lives in ``matrixinfer.api.v1``."""
