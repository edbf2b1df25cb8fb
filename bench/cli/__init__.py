"""CLI benchmark: wall time of `matrixinfer` commands, each in a fresh process."""
