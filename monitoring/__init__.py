"""Monitoring consumers: join, drift, sampling and their Prometheus metrics."""
