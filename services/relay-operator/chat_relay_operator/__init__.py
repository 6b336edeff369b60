"""The relay autoscaler: a kopf operator that sizes the outbox relay Deployment from its backlog.

Its own service and image: it reaches the relay only through Kubernetes (the Deployment's
``scale``) and the database or Prometheus (the backlog), never through the relay's code, and the
relay's image carries no kopf.

Layers (outermost first): ``main`` (console script) -> ``handlers`` (kopf timer on the
RelayAutoscaler custom resource) -> ``scaling`` (pure recommendation algorithm), ``sources``
(where the backlog is read) and ``kube`` (the few Kubernetes calls kopf does not make for us,
through lightkube).
"""
