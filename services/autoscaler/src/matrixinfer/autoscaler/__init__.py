"""MatrixInfer autoscaler: replica counts from live load.

Built in the autoscaler issue.
"""
