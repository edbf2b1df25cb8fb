"""The matrixinfer command line."""
