"""The relay autoscaler: a kopf operator that sizes the outbox relay Deployment from its backlog.

Layers (outermost first): ``main`` (console script) -> ``handlers`` (kopf timer on the
RelayAutoscaler custom resource) -> ``scaling`` (pure recommendation algorithm), ``sources``
(where the backlog is read) and ``kube`` (the few Kubernetes calls kopf does not make for us).
"""
