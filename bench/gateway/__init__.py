"""Gateway benchmark: direct-to-Triton against through-the-gateway."""
