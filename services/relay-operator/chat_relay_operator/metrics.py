"""The operator's own Prometheus metrics, labelled by the RelayAutoscaler they describe."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from chat_shared.observability.loop_lag import event_loop_lag_histogram

_LABELS = ["namespace", "name"]
BACKLOG = Gauge("relay_autoscaler_backlog", "Outbox backlog last read by the autoscaler", _LABELS)
OLDEST_AGE = Gauge("relay_autoscaler_oldest_age_seconds",
                   "Age of the oldest pending outbox event last read, seconds", _LABELS)
DESIRED = Gauge("relay_autoscaler_desired_replicas", "Replica count the autoscaler wants", _LABELS)
CURRENT = Gauge("relay_autoscaler_current_replicas", "Replica count of the target Deployment",
                _LABELS)
SCALES = Counter("relay_autoscaler_scale_total", "Scale subresource patches made",
                 [*_LABELS, "direction"])
SOURCE_ERRORS = Counter("relay_autoscaler_source_errors_total", "Failed backlog reads", _LABELS)
EVENT_LOOP_LAG = event_loop_lag_histogram("relay_autoscaler")
