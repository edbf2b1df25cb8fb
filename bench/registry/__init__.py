"""Registry benchmark: applies per second and watch delivery latency."""
