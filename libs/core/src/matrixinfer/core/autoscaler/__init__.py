"""Reaching the autoscaler: :class:`AutoscalerClient`."""

from matrixinfer.core.autoscaler.client import AutoscalerClient

__all__ = ["AutoscalerClient"]
