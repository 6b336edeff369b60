"""What every service agrees on about tenants: the default tenant and what a tenant id is.

A tenant is an organisation sharing the deployment. A user id names a person only within its
tenant (alice of acme and alice of globex are two people), so every tenant-owned row, stream
entry, Redis key and socket carries the tenant beside the user (docs/tenancy.md).
"""

from __future__ import annotations

import re

__all__ = ["DEFAULT_TENANT", "TENANT_ID"]

DEFAULT_TENANT = "default"
"""The tenant of a token without a tenant claim, of a stream entry without a tenant field and
of every row that existed before tenants."""

TENANT_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
"""What a tenant id looks like: lower-case letters, digits, ``-`` and ``_``, 1..63 characters,
starting with a letter or digit (it travels in Redis keys, stream entries and logs, so it
stays plain)."""
