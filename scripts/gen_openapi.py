"""Writes services/api/openapi.json from the proto descriptors (run after editing the proto).

The API serves the same document at /openapi.json; tests/integration/test_http_openapi.py fails
while the committed file differs from what this script would write.
"""

from __future__ import annotations

import pathlib

from chat_api.transport.openapi import render_openapi

OUT = pathlib.Path(__file__).resolve().parent.parent / "services" / "api" / "openapi.json"


def main() -> None:
    OUT.write_bytes(render_openapi())
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
