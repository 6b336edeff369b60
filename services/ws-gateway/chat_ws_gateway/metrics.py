"""The gateway's Prometheus metrics (served by the shared HealthServer on METRICS_PORT)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from chat_shared.observability.dependencies import dependency_gauge
from chat_shared.observability.loop_lag import event_loop_lag_histogram

WS_CONNECTIONS = Gauge("ws_connections", "Open WebSocket connections on this gateway")
WS_FRAMES_SENT = Counter("ws_frames_sent_total", "Frames written to WebSocket clients", ["type"])
WS_SLOW_CLIENT_DISCONNECTS = Counter(
    "ws_slow_client_disconnects_total",
    "Connections closed (4008) because their send queue overflowed")
WS_DELIVERY_LAG = Histogram(
    "ws_delivery_lag_seconds", "Event occurred_at to its frame written to the socket, seconds",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
WS_CLOSES = Counter("ws_closes_total", "Connections closed by the server, by reason", ["reason"])
WS_BAD_FRAMES = Counter("ws_bad_frames_total", "Client frames answered with an error frame",
                        ["code"])
WS_CATCH_UP_MESSAGES = Counter("ws_catch_up_messages_total",
                               "Messages delivered from PostgreSQL (resume and gap fill)")
STREAM_EVENTS = Counter("ws_stream_events_total", "Events read from the streams", ["type"])
STREAM_DUPLICATES = Counter("ws_stream_duplicate_events_total",
                            "Events dropped because their event_id was already dispatched")
STREAM_UP = Gauge("ws_stream_up", "1 while the stream reader's last XREAD succeeded")
DEPENDENCY_UP = dependency_gauge("ws")
EVENT_LOOP_LAG = event_loop_lag_histogram("ws")
