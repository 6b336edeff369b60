"""The kopf handlers: one timer on each RelayAutoscaler, never on the Deployment.

kopf puts a finalizer on the objects its timers run on; on the Deployment that finalizer would
make it hang in deletion whenever the operator is down. The timer ticks at the operator's tick
interval and each resource is polled on its own ``pollingIntervalSeconds``.

Every tick is idempotent: it reads the world (annotations, HPAs, the scale subresource, the
backlog), decides, patches ``scale`` only when the number differs, and writes only the status
fields that changed. The only memory between ticks is the HPA-style recommendation window and the
scale-up history (in memory, as the HPA keeps them) plus the failure count and the Ready reason
(also in status, so a new leader continues them). A Warning event goes out when the Ready reason
turns into a refusal; the reason this process last wrote is the one it compares with, since the
status in a tick's body can predate the previous tick's status write (kopf's watch lags).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf

from chat_relay_operator import metrics
from chat_relay_operator.kube import KubeClient, KubeError, NotFound
from chat_relay_operator.resource import (
    GROUP,
    PAUSED_ANNOTATION,
    PLURAL,
    VERSION,
    AutoscalerSpec,
    InvalidSpec,
    PostgresRef,
    condition,
    merge_conditions,
    parse_spec,
)
from chat_relay_operator.scaling import RatePolicy, Reading, Recommender
from chat_relay_operator.settings import OperatorConfig
from chat_relay_operator.sources import (
    BacklogSource,
    PostgresSource,
    PrometheusSource,
    SourceError,
)


@dataclass
class _State:
    recommender: Recommender
    last_poll: float | None = None
    failures: int | None = None
    source: BacklogSource | None = None
    source_key: object = None
    ready_reason: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """One tick at a time per resource. A tick can outlast the polling interval (a slow
    Kubernetes API or backlog source, a loaded machine), and it awaits between reading the
    replicas and recording its scale-up: a tick started in that gap saw the new count without
    the scale-up that made it, and passed the rate limit again (1 -> 5 -> 9 where the limit
    allows one step: seen in CI, reproduced by
    ``tests/operator/test_operator.py::test_ticks_of_one_resource_never_overlap``)."""


@dataclass
class _Outcome:
    """What one tick learned, turned into status at the end."""

    fields: dict[str, Any] = field(default_factory=dict)
    conditions: list[dict[str, str]] = field(default_factory=list)


class Autoscalers:
    """The runtime behind the handlers: per-resource state and the API client."""

    def __init__(self, config: OperatorConfig, kube: KubeClient,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._kube = kube
        self._clock = clock
        self._states: dict[str, _State] = {}

    async def reconcile(self, body: kopf.Body, spec: kopf.Spec, status: kopf.Status,
                        meta: kopf.Meta, name: str, namespace: str, uid: str,
                        patch: kopf.Patch, logger: Any, **_: Any) -> None:
        state = self._states.get(uid)
        if state is None:
            rate = RatePolicy(period_seconds=self._config.scale_up_period)
            state = self._states[uid] = _State(Recommender(rate=rate))
        out = _Outcome()
        try:
            parsed = parse_spec(spec)
        except InvalidSpec as exc:
            out.conditions.append(condition("Ready", False, "InvalidSpec", str(exc)))
            _write_status(patch, status, out)
            state.ready_reason = "InvalidSpec"
            return
        if state.lock.locked():
            return  # a tick is running: this one would only repeat it
        async with state.lock:
            now = self._clock()
            if (state.last_poll is not None
                    and now - state.last_poll < parsed.polling_interval_seconds):
                return
            state.last_poll = now
            await self._tick(state, parsed, body, status, meta, name, namespace, out, logger)
            _write_status(patch, status, out)
            state.ready_reason = next(
                (c["reason"] for c in out.conditions if c["type"] == "Ready"),
                state.ready_reason)

    async def _tick(self, state: _State, spec: AutoscalerSpec, body: kopf.Body,
                    status: Mapping[str, Any], meta: kopf.Meta, name: str, namespace: str,
                    out: _Outcome, logger: Any) -> None:
        kube = self._kube
        target = spec.target
        # what this process last wrote, else (a new leader) what status says
        was = state.ready_reason or _reason_of(status, "Ready")
        if meta.get("annotations", {}).get(PAUSED_ANNOTATION) == "true":
            out.conditions.append(condition(
                "Ready", False, "Paused",
                f"{PAUSED_ANNOTATION}=true: deployment {target} is left alone"))
            return
        try:
            hpas = await kube.hpas_targeting(namespace, target)
            if hpas:
                msg = (f"HorizontalPodAutoscaler {', '.join(hpas)} already scales deployment "
                       f"{target}; refusing to fight it")
                if was != "HPAConflict":
                    kopf.event(body, type="Warning", reason="HPAConflict", message=msg)
                out.conditions.append(condition("Ready", False, "HPAConflict", msg))
                return
            current = await kube.get_scale_replicas(namespace, target)
        except NotFound:
            msg = f"deployment {target} not found in {namespace}"
            if was != "TargetNotFound":
                kopf.event(body, type="Warning", reason="TargetNotFound", message=msg)
            out.conditions.append(condition("Ready", False, "TargetNotFound", msg))
            return
        except KubeError as exc:
            out.conditions.append(condition("Ready", False, "KubernetesError", str(exc)))
            return

        if state.failures is None:  # a new leader carries on the count in status
            state.failures = int(status.get("consecutiveFailures") or 0)
        reading: Reading | None = None
        try:
            source = await self._source(state, spec, namespace)
            reading = await source.read()
            state.failures = 0
            out.conditions.append(condition("MetricAvailable", True, "BacklogRead",
                                            f"backlog {reading.backlog}, oldest "
                                            f"{reading.oldest_age_seconds:.0f}s"))
            out.fields.update(backlog=reading.backlog,
                              oldestAgeSeconds=int(reading.oldest_age_seconds))
            metrics.BACKLOG.labels(namespace, name).set(reading.backlog)
            metrics.OLDEST_AGE.labels(namespace, name).set(reading.oldest_age_seconds)
        except (SourceError, KubeError) as exc:
            state.failures += 1
            metrics.SOURCE_ERRORS.labels(namespace, name).inc()
            logger.warning(f"backlog unavailable ({state.failures} in a row): {exc}")
            out.conditions.append(condition("MetricAvailable", False, "SourceUnavailable",
                                            f"{exc} ({state.failures} in a row)"))
        out.fields["consecutiveFailures"] = state.failures

        decision = state.recommender.decide(now=self._clock(), current=current, reading=reading,
                                            failures=state.failures, spec=spec.scaling)
        desired = decision.desired
        if desired != current:
            try:
                await kube.patch_scale_replicas(namespace, target, desired)
            except KubeError as exc:
                out.conditions.append(condition("Ready", False, "ScaleFailed", str(exc)))
                return
            state.recommender.record_scale(self._clock(), current, desired)
            direction = "up" if desired > current else "down"
            metrics.SCALES.labels(namespace, name, direction).inc()
            kopf.event(body, type="Normal", reason=f"Scaled{direction.capitalize()}",
                       message=f"deployment {target}: {current} -> {desired} ({decision.message})")
            logger.info(f"scaled deployment {target} {current} -> {desired}: {decision.message}")
            out.fields["lastScaleTime"] = _now_iso()
        metrics.DESIRED.labels(namespace, name).set(desired)
        metrics.CURRENT.labels(namespace, name).set(desired)
        out.fields.update(desiredReplicas=desired, currentReplicas=desired)
        out.conditions.append(condition("Ready", True, "Scaling", decision.reason))
        out.conditions.append(condition("ScalingLimited", decision.limited is not None,
                                        "Limited" if decision.limited else "WithinLimits",
                                        decision.limited or "desired count is within limits"))

    async def _source(self, state: _State, spec: AutoscalerSpec, namespace: str) -> BacklogSource:
        """The resource's source, rebuilt only when its definition (or the DSN) changes."""
        src = spec.source
        if isinstance(src, PostgresRef):
            dsn = await self._kube.read_secret_key(namespace, src.secret_name, src.secret_key)
            key: object = ("postgres", dsn)
        else:
            key = src
        if state.source is None or state.source_key != key:
            if state.source is not None:
                await state.source.close()
            state.source = (PostgresSource(dsn) if isinstance(src, PostgresRef) else
                            PrometheusSource(src.url, src.backlog_query, src.oldest_age_query))
            state.source_key = key
        return state.source

    async def forget(self, uid: str, name: str, namespace: str, **_: Any) -> None:
        """The resource is gone: drop its memory, its source and its metric series."""
        state = self._states.pop(uid, None)
        if state is not None and state.source is not None:
            await state.source.close()
        for gauge in (metrics.BACKLOG, metrics.OLDEST_AGE, metrics.DESIRED, metrics.CURRENT):
            try:
                gauge.remove(namespace, name)
            except KeyError:
                pass

    async def close(self, **_: Any) -> None:
        for state in self._states.values():
            if state.source is not None:
                await state.source.close()
        self._states.clear()


def operator_settings() -> kopf.OperatorSettings:
    """kopf settings for this operator, shared by ``main`` and the tests."""
    settings = kopf.OperatorSettings()
    # Namespaced with an exact namespace: no cluster-wide namespace or CRD watching, so the
    # Role needs no ClusterRole next to it.
    settings.scanning.disabled = True
    # kopf mirrors handler logs as Kubernetes events from INFO up; the operator posts its own
    # events for scales and refusals, so only kopf's warnings and errors join them.
    settings.posting.level = logging.WARNING
    return settings


def register(registry: kopf.OperatorRegistry, config: OperatorConfig, kube: KubeClient,
             clock: Callable[[], float] = time.monotonic) -> Autoscalers:
    """Adds the autoscaler's handlers to ``registry`` (the composition root for kopf).

    ``kube`` makes the operator's own API calls; the caller closes it once kopf has stopped
    (kopf's cleanup handlers can run while a last timer tick is still in flight). kopf's own
    calls go where the registry's login handlers say.
    """
    scalers = Autoscalers(config, kube, clock)

    # kopf's callback protocols spell out every kwarg; these handlers take the ones they use
    kopf.timer(GROUP, VERSION, PLURAL, id="reconcile", registry=registry,
               interval=config.operator_tick_interval)(scalers.reconcile)  # type: ignore[arg-type]
    kopf.on.delete(GROUP, VERSION, PLURAL, id="forget", registry=registry,
                   optional=True)(scalers.forget)  # type: ignore[arg-type]
    kopf.on.cleanup(registry=registry)(scalers.close)
    return scalers


def _reason_of(status: Mapping[str, Any], type_: str) -> str | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == type_:
            return str(cond.get("reason"))
    return None


def _write_status(patch: kopf.Patch, status: Mapping[str, Any], out: _Outcome) -> None:
    """Only what changed goes into the patch, so a steady state makes no API writes."""
    for key, value in out.fields.items():
        if status.get(key) != value:
            patch.status[key] = value
    old = list(status.get("conditions") or [])
    merged = merge_conditions(old, out.conditions, _now_iso())
    if merged != old:
        patch.status["conditions"] = merged


def _now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
