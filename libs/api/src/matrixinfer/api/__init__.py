"""MatrixInfer's contracts.

Code generated from protos/ lives in ``matrixinfer.api.v1`` (made by `make setup`).
"""
