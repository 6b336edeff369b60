"""The RelayAutoscaler custom resource as the operator sees it: names, typed spec, conditions.

The CRD (helm/chat-service/crds/relayautoscaler.yaml) validates and defaults on the API server;
``parse_spec`` repeats the defaults and the cross-field rules so the operator also behaves on an
API server that skipped them (and in tests against kmock, which validates nothing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chat_relay_operator.scaling import ScalingSpec

GROUP = "chat.example.dev"
VERSION = "v1"
PLURAL = "relayautoscalers"
KIND = "RelayAutoscaler"
PAUSED_ANNOTATION = f"{GROUP}/paused"
"""``"true"`` leaves the Deployment alone (status still says so)."""

DEFAULT_BACKLOG_QUERY = "max(outbox_pending_count)"
DEFAULT_OLDEST_AGE_QUERY = "max(outbox_oldest_pending_age_seconds)"


class InvalidSpec(ValueError):
    """The spec cannot be acted on; the message goes to the Ready condition."""


@dataclass(frozen=True)
class PostgresRef:
    secret_name: str
    secret_key: str


@dataclass(frozen=True)
class PrometheusRef:
    url: str
    backlog_query: str
    oldest_age_query: str


@dataclass(frozen=True)
class AutoscalerSpec:
    target: str
    polling_interval_seconds: float
    source: PostgresRef | PrometheusRef
    scaling: ScalingSpec


def parse_spec(spec: Mapping[str, Any]) -> AutoscalerSpec:
    try:
        target = str(spec["scaleTargetRef"]["name"])
        kind = spec["scaleTargetRef"].get("kind", "Deployment")
        min_r = int(spec.get("minReplicas", 1))
        max_r = int(spec["maxReplicas"])
        age = spec.get("oldestAgeThresholdSeconds")
        scaling = ScalingSpec(
            min_replicas=min_r,
            max_replicas=max_r,
            target_backlog_per_replica=int(spec.get("targetBacklogPerReplica", 100)),
            oldest_age_threshold_seconds=float(age) if age is not None else None,
            tolerance=float(spec.get("tolerance", 0.1)),
            scale_up_window_seconds=float(
                (spec.get("scaleUp") or {}).get("stabilizationWindowSeconds", 0)),
            scale_down_window_seconds=float(
                (spec.get("scaleDown") or {}).get("stabilizationWindowSeconds", 300)),
            fallback_replicas=int(spec.get("fallbackReplicas", min_r)),
            failure_threshold=int(spec.get("failureThreshold", 3)),
        )
        polling = float(spec.get("pollingIntervalSeconds", 15))
        source = _parse_source(spec.get("source") or {})
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, InvalidSpec):
            raise
        raise InvalidSpec(f"spec is incomplete or mistyped: {exc!r}") from exc
    if kind != "Deployment":
        raise InvalidSpec(f"scaleTargetRef.kind {kind!r}: only Deployment is supported")
    if not 1 <= min_r <= max_r:
        raise InvalidSpec(f"need 1 <= minReplicas ({min_r}) <= maxReplicas ({max_r})")
    if scaling.target_backlog_per_replica < 1 or polling <= 0 or scaling.failure_threshold < 1:
        raise InvalidSpec("targetBacklogPerReplica, pollingIntervalSeconds and failureThreshold "
                          "must be positive")
    return AutoscalerSpec(target=target, polling_interval_seconds=polling, source=source,
                          scaling=scaling)


def _parse_source(source: Mapping[str, Any]) -> PostgresRef | PrometheusRef:
    if ("postgres" in source) == ("prometheus" in source):
        raise InvalidSpec("source needs exactly one of postgres or prometheus")
    if "postgres" in source:
        ref = source["postgres"]["secretRef"]
        return PostgresRef(secret_name=str(ref["name"]),
                           secret_key=str(ref.get("key", "DB_SOURCE")))
    prom = source["prometheus"]
    return PrometheusRef(
        url=str(prom["url"]),
        backlog_query=str(prom.get("backlogQuery") or DEFAULT_BACKLOG_QUERY),
        oldest_age_query=str(prom.get("oldestAgeQuery") or DEFAULT_OLDEST_AGE_QUERY),
    )


def condition(type_: str, ok: bool, reason: str, message: str) -> dict[str, str]:
    return {"type": type_, "status": "True" if ok else "False", "reason": reason,
            "message": message}


def merge_conditions(old: Sequence[Mapping[str, Any]], new: Sequence[dict[str, str]],
                     now_iso: str) -> list[dict[str, str]]:
    """``new`` with ``lastTransitionTime`` kept from ``old`` where the status did not flip;
    conditions of other types in ``old`` are kept as they are."""
    by_type = {c.get("type"): c for c in old}
    merged: list[dict[str, str]] = []
    for cond in new:
        prev = by_type.pop(cond["type"], None)
        same = prev is not None and prev.get("status") == cond["status"]
        stamp = str(prev.get("lastTransitionTime", now_iso)) if same and prev else now_iso
        merged.append({**cond, "lastTransitionTime": stamp})
    merged.extend(dict(c) for c in old if c.get("type") in by_type)
    return merged
