"""Writes services/api/schema.graphql, the GraphQL schema's SDL (run after editing the schema).

The schema is Python (chat_api.transport.graphql_schema); this file is its reviewable,
tool-readable form. tests/unit/test_graphql_schema.py fails while the committed file differs
from what this script would write.
"""

from __future__ import annotations

import pathlib

from chat_api.transport.graphql_endpoint import schema_sdl

OUT = pathlib.Path(__file__).resolve().parent.parent / "services" / "api" / "schema.graphql"


def main() -> None:
    OUT.write_text(schema_sdl(), encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
