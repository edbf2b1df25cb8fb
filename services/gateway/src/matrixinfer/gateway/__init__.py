"""MatrixInfer gateway: the KServe v2 data plane.

Built in the gateway issue.
"""
