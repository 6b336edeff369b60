"""The operator process's settings (environment only, like every service here)."""

from __future__ import annotations

from pydantic import Field

from chat_shared.config import CommonSettings, Seconds


class OperatorConfig(CommonSettings):
    """Named ``OperatorConfig`` so it never gets confused with ``kopf.OperatorSettings``."""

    operator_namespace: str = Field(
        "", description="namespace to watch (RelayAutoscalers, Deployments); empty = the pod's "
                        "own namespace (POD_NAMESPACE or the service account's)")
    peering_name: str = Field(
        "chat-relay-operator",
        description="KopfPeering object that keeps two replicas from both acting; empty = "
                    "standalone (a single replica only)")
    metrics_port: int = Field(9103, ge=0, le=65535, description="/metrics port; 0 = off")
    metrics_address: str = Field(
        "", description="host /metrics and /healthz bind; empty = all interfaces (the kubelet "
                        "probes /healthz from outside the pod)")
    health_port: int = Field(8082, ge=0, le=65535,
                             description="kopf liveness endpoint port (/healthz); 0 = off")
    operator_tick_interval: Seconds = Field(
        1.0, gt=0, le=60,
        description="seconds between timer ticks; each resource is polled on its own "
                    "pollingIntervalSeconds, checked at every tick")
    scale_up_period: Seconds = Field(
        15.0, gt=0, le=3600,
        description="seconds over which the scale-up rate limit (double or +4) applies")
