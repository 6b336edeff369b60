"""One way for every service to watch the servers it depends on.

Each service has one ``DependencyProbe`` with one check per dependency ("postgresql",
"redis"). A check is an async callable that returns True when the dependency answered; an
exception or a check slower than ``timeout`` counts as down. Each probe:

- sets ``<prefix>_dependency_up{dependency}`` (``chat_dependency_up`` in the API,
  ``outbox_relay_dependency_up`` in the relay, ``ws_dependency_up`` in the gateway: one name
  pattern, so one alert rule and one dashboard panel read them all);
- logs ``dependency_changed`` (dependency, up, error) once per change, not once per probe;
- calls ``on_change`` so the service can flip its health (gRPC health, /readyz).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal

from prometheus_client import Gauge

from chat_shared.observability.logging import get_logger

__all__ = ["DependencyCheck", "DependencyProbe", "dependency_gauge"]

log = get_logger(__name__)

DependencyCheck = Callable[[], Awaitable[bool]]
OnChange = Callable[[str, bool], Awaitable[None]]


def dependency_gauge(prefix: str, *, multiprocess_mode: Literal["all", "livemin"] = "all"
                     ) -> Gauge:
    """The service's ``<prefix>_dependency_up{dependency}`` gauge (create once per process).

    ``multiprocess_mode`` says how several worker processes of one service combine (the API's
    API_WORKERS); it does nothing in a single process.
    """
    return Gauge(f"{prefix}_dependency_up", "1 when the dependency answered the last probe",
                 ["dependency"], multiprocess_mode=multiprocess_mode)


class DependencyProbe:
    def __init__(self, gauge: Gauge, checks: Mapping[str, DependencyCheck], *,
                 timeout: float = 2.0, on_change: OnChange | None = None) -> None:
        self._gauge = gauge
        self._checks = dict(checks)
        self._timeout = timeout
        self._on_change = on_change
        self.up: dict[str, bool | None] = dict.fromkeys(self._checks)
        """The last answer per dependency; None before the first probe."""

    def all_up(self) -> bool:
        return all(self.up.values())

    async def probe_once(self) -> dict[str, bool]:
        """Runs every check (concurrently, each bounded by ``timeout``); returns the answers."""
        names = list(self._checks)
        answers = await asyncio.gather(*(self._check(name) for name in names))
        for name, (up, error) in zip(names, answers, strict=True):
            await self.record(name, up, error)
        return {name: bool(self.up[name]) for name in names}

    async def record(self, name: str, up: bool, error: str = "") -> None:
        """Takes one observation of ``name``, from the probe or from the service's own calls.

        A service that sees a dependency fail in its work may say so at once, before the next
        probe: the relay does when its work connection breaks.
        """
        self._gauge.labels(name).set(int(up))
        if self.up[name] == up:
            return
        self.up[name] = up
        if up:
            log.info("dependency_changed", dependency=name, up=True)
        else:
            log.error("dependency_changed", dependency=name, up=False, error=error)
        if self._on_change is not None:
            await self._on_change(name, up)

    async def run(self, interval: float) -> None:
        """Probes every ``interval`` seconds until cancelled."""
        while True:
            try:
                await self.probe_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the probe must outlive any one failure
                log.exception("probe_failed")
            await asyncio.sleep(interval)

    async def _check(self, name: str) -> tuple[bool, str]:
        try:
            async with asyncio.timeout(self._timeout):
                return bool(await self._checks[name]()), ""
        except TimeoutError:
            return False, f"no answer within {self._timeout:g} s"
        except Exception as exc:  # noqa: BLE001 - any failure of a check means "down"
            return False, f"{type(exc).__name__}: {exc.__cause__ or exc}"
