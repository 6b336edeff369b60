"""``chat-relay-operator``: runs the relay autoscaler until SIGTERM/SIGINT.

It watches one namespace (its own by default) and joins a namespaced KopfPeering with a random
priority: kopf pauses every operator that sees a peer of higher *or equal* priority, so two
replicas with the same fixed priority would both stand still; random priorities let exactly one
act and the other take over when its peer's record expires.

Credentials: kopf logs in with the default registry's fallback logins, and the operator's own
calls (``kube``) use lightkube's ``KubeConfig.from_env``; both look in the same places, the
pod's service account first, then ``KUBECONFIG`` or ``~/.kube/config``.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import random
import sys

import kopf
import lightkube

from chat_relay_operator.handlers import operator_settings, register
from chat_relay_operator.kube import KubeClient
from chat_relay_operator.metrics import EVENT_LOOP_LAG
from chat_relay_operator.settings import OperatorConfig
from chat_shared.config import ConfigError, load_settings
from chat_shared.observability.logging import configure_logging, get_logger
from chat_shared.observability.loop_lag import EventLoopLagMonitor
from chat_shared.observability.metrics import serve_metrics

log = get_logger("chat_relay_operator")
_SA_NAMESPACE = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def watched_namespace(config: OperatorConfig) -> str:
    if config.operator_namespace:
        return config.operator_namespace
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    if _SA_NAMESPACE.exists():
        return _SA_NAMESPACE.read_text().strip()
    raise ConfigError("OPERATOR_NAMESPACE: not set and not running in a pod")


async def run(config: OperatorConfig, namespace: str, kube_config: lightkube.KubeConfig) -> None:
    # the default registry carries kopf's fallback logins (in-cluster service account, kubeconfig)
    registry = kopf.get_default_registry()
    kube = KubeClient(kube_config)
    register(registry, config, kube)
    liveness = (f"http://{config.metrics_host}:{config.health_port}/healthz"
                if config.health_port else None)
    loop_lag = EventLoopLagMonitor(EVENT_LOOP_LAG)
    loop_lag.start()
    try:
        await kopf.operator(
            registry=registry,
            settings=operator_settings(),
            namespaces=[namespace],
            standalone=not config.peering_name,
            peering_name=config.peering_name or None,
            priority=random.randint(1, 1_000_000),
            liveness_endpoint=liveness,
        )
    finally:
        await loop_lag.stop()
        await kube.close()


def main() -> int:
    try:
        config = load_settings(OperatorConfig)
        namespace = watched_namespace(config)
        kube_config = lightkube.KubeConfig.from_env()
    except (ConfigError, lightkube.ConfigError) as exc:
        print(f"chat-relay-operator: {exc}", file=sys.stderr)
        return 2
    configure_logging("chat-relay-operator", config.log_level)
    port = serve_metrics(config.metrics_port, addr=config.metrics_host)
    log.info("starting", namespace=namespace, peering=config.peering_name or "standalone",
             metrics_port=port)
    asyncio.run(run(config, namespace, kube_config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
