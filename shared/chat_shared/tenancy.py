"""What every service agrees on about tenants: the default tenant and what a tenant id is.

A tenant is an organisation sharing the deployment. A user id names a person only within its
tenant (alice of acme and alice of globex are two people), so every tenant-owned row, stream
entry, Redis key and socket carries the tenant beside the user (docs/tenancy.md).
"""

from __future__ import annotations

import re

__all__ = ["DEFAULT_TENANT", "OTHER_TENANTS", "TENANT_ID", "TenantLabel"]

DEFAULT_TENANT = "default"
"""The tenant of a token without a tenant claim, of a stream entry without a tenant field and
of every row that existed before tenants."""

TENANT_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
"""What a tenant id looks like: lower-case letters, digits, ``-`` and ``_``, 1..63 characters,
starting with a letter or digit (it travels in Redis keys, stream entries and logs, so it
stays plain)."""

OTHER_TENANTS = "other"
"""The metric label value of every tenant not on the allow-list."""


class TenantLabel:
    """The value of a metric's ``tenant`` label: the tenant itself when it is on the allow-list
    (``METRICS_TENANT_LABELS``), ``other`` otherwise.

    Why an allow-list: a label value per tenant is a time series per tenant in Prometheus, and a
    deployment with thousands of tenants would create thousands of series per metric. The
    operator names the few tenants worth watching on their own; everyone else is counted
    together.
    """

    __slots__ = ("_allowed",)

    def __init__(self, allowed: frozenset[str] = frozenset()) -> None:
        self._allowed = allowed

    def __call__(self, tenant: str) -> str:
        return tenant if tenant in self._allowed else OTHER_TENANTS
