"""The MatrixInfer registry: stores resources, admits them, keeps Model revisions and
streams changes with Kubernetes watch semantics."""
