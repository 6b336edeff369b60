"""Prometheus metrics: one registry per process, served on METRICS_PORT at /metrics."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server


def serve_metrics(port: int, registry: CollectorRegistry = REGISTRY, addr: str = "0.0.0.0") -> int:
    """Starts the /metrics endpoint in a background thread; returns the bound port (0 = off)."""
    if port <= 0:
        return 0
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return int(server.server_port)
