"""Development-only tooling for chat-service; never installed in a service image.

- ``process``: ``ServiceProcess``, one process started, captured, probed and stopped the same
  way by ``chat-dev``, ``chat-bench`` and the tests; ``services``: the chat services on it;
- ``local_postgres`` / ``local_redis``: throwaway servers from the installed binaries;
- ``ports``: how a port is taken (port 0, kept bound, or the server's own bind and a retry);
- ``chat_dev`` and ``supervisor``: ``chat-dev``, the whole stack on one machine;
- ``pytest_plugin``: the PostgreSQL and Redis fixtures (loaded through the ``pytest11`` entry
  point, before coverage measurement starts: so nothing is imported here, and the plugin
  imports the rest only when a fixture runs).
"""
