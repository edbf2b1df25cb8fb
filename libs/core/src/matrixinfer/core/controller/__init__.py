"""Reaching the controller: :class:`ControllerClient`."""

from matrixinfer.core.controller.client import ControllerClient

__all__ = ["ControllerClient"]
