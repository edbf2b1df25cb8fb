"""Benchmarks: each runs with one command and writes its figures to BENCHMARKS.md."""
