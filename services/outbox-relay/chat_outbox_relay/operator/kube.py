"""The few Kubernetes calls the autoscaler makes itself: the target's ``scale`` subresource,
the namespace's HPAs, the DSN Secret.

They go through kopf's own authenticated API client (pinned kopf==1.45.2) rather than a second
client library: the same credentials (whatever ``@kopf.on.login`` produced), the same retries and
timeouts, and no extra dependency in the image. kopf's error types are wrapped into ``KubeError``
here so nothing above this module sees kopf internals.
"""

from __future__ import annotations

import base64
import logging
from typing import Any
from urllib.parse import quote

import aiohttp
import kopf
from kopf._cogs.clients import api as kopf_api  # noqa: PLC2701 - pinned kopf version
from kopf._cogs.clients import errors as kopf_errors

_MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}
_BACKOFFS = (0.5, 1.0)
"""Short retries: a poll comes again in seconds, a long retry loop would only delay it."""


class KubeError(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotFound(KubeError):
    pass


class KubeClient:
    """Namespaced calls made with kopf's session; ``settings`` are kopf's operator settings."""

    def __init__(self, settings: kopf.OperatorSettings, logger: logging.Logger | Any) -> None:
        self._settings = settings
        self._logger = logger

    async def get_scale_replicas(self, namespace: str, deployment: str) -> int:
        """The Deployment's wanted replica count, as its ``scale`` subresource says."""
        scale = await self._call("get", _deployment_url(namespace, deployment) + "/scale")
        return int((scale.get("spec") or {}).get("replicas") or 0)

    async def patch_scale_replicas(self, namespace: str, deployment: str, replicas: int) -> None:
        await self._call("patch", _deployment_url(namespace, deployment) + "/scale",
                         {"spec": {"replicas": replicas}}, _MERGE_PATCH)

    async def hpas_targeting(self, namespace: str, deployment: str) -> list[str]:
        """Names of autoscaling/v2 HPAs whose scaleTargetRef is this Deployment."""
        found = await self._call(
            "get", f"/apis/autoscaling/v2/namespaces/{quote(namespace)}/horizontalpodautoscalers")
        names = []
        for hpa in found.get("items") or []:
            ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
            if ref.get("kind") == "Deployment" and ref.get("name") == deployment:
                names.append(str(hpa["metadata"]["name"]))
        return sorted(names)

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str:
        secret = await self._call("get", f"/api/v1/namespaces/{quote(namespace)}/secrets/"
                                         f"{quote(name)}")
        data = secret.get("data") or {}
        if key not in data:
            raise NotFound(f"secret {name} has no key {key!r}")
        return base64.b64decode(data[key]).decode()

    async def _call(self, method: str, url: str, payload: object | None = None,
                    headers: dict[str, str] | None = None) -> Any:
        try:
            response = await kopf_api.request(
                method, url, payload=payload, headers=headers, backoffs=_BACKOFFS,
                settings=self._settings, logger=self._logger)
            async with response:
                return await response.json()
        except kopf_errors.APINotFoundError as exc:
            raise NotFound(f"{method.upper()} {url}: not found", 404) from exc
        except kopf_errors.APIError as exc:
            raise KubeError(f"{method.upper()} {url}: {exc.status} {exc}", exc.status) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise KubeError(f"{method.upper()} {url}: {type(exc).__name__}") from exc


def _deployment_url(namespace: str, name: str) -> str:
    return f"/apis/apps/v1/namespaces/{quote(namespace)}/deployments/{quote(name)}"
