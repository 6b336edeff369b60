"""``chat-token --user alice [--tenant acme]``: prints a development token signed with the
configured secret (the tenant in the JWT_TENANT_CLAIM claim; none = the default tenant)."""

from __future__ import annotations

import argparse
import sys
from typing import Literal

from chat_shared.auth import issue_token
from chat_shared.config import CommonAuthSettings, ConfigError, load_settings, parse_duration
from chat_shared.tenancy import TENANT_ID


class _TokenSettings(CommonAuthSettings):
    # A developer's tool, not a deployed service: with no ENVIRONMENT it signs with the
    # development secret (the one a development stack accepts); with ENVIRONMENT=staging or
    # production it needs the real JWT_SECRET like the services do.
    environment: Literal["development", "test", "staging", "production"] = "development"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="chat-token", description="Print a signed development JWT for a user."
    )
    parser.add_argument("--user", required=True, help="user id (the token's sub)")
    parser.add_argument("--tenant", default="",
                        help="tenant id (the JWT_TENANT_CLAIM claim); omitted = default tenant")
    parser.add_argument("--ttl", default="1h", help="lifetime, e.g. 1h, 15m, 3600 (default 1h)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(_TokenSettings)
        ttl = parse_duration(args.ttl)
    except (ConfigError, ValueError) as exc:
        print(f"chat-token: {exc}", file=sys.stderr)
        return 2
    hs = [a for a in settings.algorithm_list if a.startswith("HS")]
    if not hs:
        print("chat-token: JWT_ALGORITHMS has no HS* algorithm; tokens come from your IdP",
              file=sys.stderr)
        return 2
    if not args.user.strip() or len(args.user) > 128:
        print("chat-token: --user must be 1..128 characters", file=sys.stderr)
        return 2
    if args.tenant and not TENANT_ID.fullmatch(args.tenant):
        print("chat-token: --tenant must be 1..63 of a-z 0-9 - _ (starting with a letter or "
              "digit)", file=sys.stderr)
        return 2
    print(issue_token(args.user, secret=settings.jwt_secret, ttl_seconds=ttl,
                      issuer=settings.jwt_issuer, audience=settings.jwt_audience, algorithm=hs[0],
                      tenant=args.tenant, tenant_claim=settings.jwt_tenant_claim))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
