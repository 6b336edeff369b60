"""The few Kubernetes calls the autoscaler makes itself: the target's ``scale`` subresource,
the namespace's HPAs, the DSN Secret.

kopf makes its own calls (watching RelayAutoscalers, writing their status from the handler's
``patch``, posting events, peering) with what its login handlers found. These calls go through
lightkube, a typed async client, configured from the same places: the pod's service account
(whose rotated token lightkube re-reads), else ``KUBECONFIG`` or ``~/.kube/config``
(``KubeConfig.from_env``). lightkube's and httpx2's errors are wrapped into ``KubeError`` here so
nothing above this module sees either library.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx2
from lightkube import AsyncClient, ConfigError, KubeConfig
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler
from lightkube.resources.core_v1 import Secret
from lightkube.types import PatchType

from chat_shared.backoff import Backoff

FIELD_MANAGER = "chat-relay-operator"
_ATTEMPTS = 3
"""Few, short retries (0.5 s, then up to 1 s): a poll comes again in seconds, a long retry
loop would only delay it."""

T = TypeVar("T")


class KubeError(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotFound(KubeError):
    pass


class KubeClient:
    """Namespaced calls through one lightkube ``AsyncClient``; ``close`` releases it.

    Every call is bounded by ``timeout_seconds`` and retried twice (after 0.5 s and 1 s) on a
    connection failure, 429 or 5xx, as kopf retries its own requests.
    """

    def __init__(self, config: KubeConfig, *, timeout_seconds: float = 5.0) -> None:
        self._client = AsyncClient(config, timeout=httpx2.Timeout(timeout_seconds),
                                   field_manager=FIELD_MANAGER)

    async def close(self) -> None:
        await self._client.close()

    async def get_scale_replicas(self, namespace: str, deployment: str) -> int:
        """The Deployment's wanted replica count, as its ``scale`` subresource says."""
        scale = await self._call(
            f"GET deployments/{deployment}/scale",
            lambda: self._client.get(Deployment.Scale, deployment, namespace=namespace))
        return int(scale.spec.replicas or 0) if scale.spec is not None else 0

    async def patch_scale_replicas(self, namespace: str, deployment: str, replicas: int) -> None:
        await self._call(
            f"PATCH deployments/{deployment}/scale",
            lambda: self._client.patch(Deployment.Scale, deployment,
                                       {"spec": {"replicas": replicas}}, namespace=namespace,
                                       patch_type=PatchType.MERGE))

    async def hpas_targeting(self, namespace: str, deployment: str) -> list[str]:
        """Names of autoscaling/v2 HPAs whose scaleTargetRef is this Deployment."""

        async def listed() -> list[HorizontalPodAutoscaler]:
            return [hpa async for hpa in self._client.list(HorizontalPodAutoscaler,
                                                             namespace=namespace)]

        names = []
        for hpa in await self._call("LIST horizontalpodautoscalers", listed):
            ref = hpa.spec.scaleTargetRef if hpa.spec is not None else None
            if ref is not None and ref.kind == "Deployment" and ref.name == deployment:
                names.append(str(hpa.metadata.name if hpa.metadata else ""))
        return sorted(names)

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str:
        secret = await self._call(f"GET secrets/{name}",
                                  lambda: self._client.get(Secret, name, namespace=namespace))
        data = secret.data or {}
        if key not in data:
            raise NotFound(f"secret {name} has no key {key!r}")
        return base64.b64decode(data[key]).decode()

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        retry = Backoff(0.5, 1.0)
        for attempt in range(1, _ATTEMPTS + 1):
            last = attempt == _ATTEMPTS
            try:
                return await call()
            except httpx2.HTTPStatusError as exc:  # lightkube's ApiError is one
                code = exc.response.status_code
                if code == 404:
                    raise NotFound(f"{what}: not found", 404) from exc
                if last or not (code == 429 or code >= 500):
                    raise KubeError(f"{what}: {code} {_reason(exc.response)}", code) from exc
            except httpx2.TransportError as exc:
                if last:
                    raise KubeError(f"{what}: {type(exc).__name__}") from exc
            except (httpx2.HTTPError, ConfigError) as exc:
                # a request that cannot be sent, e.g. the token file is gone
                raise KubeError(f"{what}: {type(exc).__name__}: {exc}") from exc
            await asyncio.sleep(retry.next_delay())
        raise AssertionError("unreachable: the last attempt returns or raises")


def _reason(response: httpx2.Response) -> str:
    """The API server's own words (a ``Status`` object's reason), else the HTTP reason."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("reason"):
        return str(body["reason"])
    return response.reason_phrase
