"""The GraphiQL page at ``GET /graphql``, working with no internet access.

strawberry's own page loads GraphiQL and React from a CDN; a developer on a train, or a
cluster without egress, would get a blank page. Here the page loads the same scripts from this
process: GraphiQL 3's browser build and React 18's, vendored from their npm packages into
``graphiql_assets/`` (their licences beside them; ``scripts/vendor_graphiql.sh`` makes them
again). They are stored gzipped (730 KB instead of 5 MB) and sent as they are with
``Content-Encoding: gzip``, which every browser accepts. The page is served only where
GRAPHQL_IDE allows it (by default only in development).
"""

from __future__ import annotations

import pathlib
from html import escape

from aiohttp import hdrs, web

ASSETS = pathlib.Path(__file__).with_name("graphiql_assets")
_SCRIPTS = ("react.production.min.js", "react-dom.production.min.js", "graphiql.min.js")
_TYPES = {".js": "text/javascript", ".css": "text/css"}


def page(endpoint: str) -> str:
    """The HTML page; its scripts and styles come from ``{endpoint}/assets/``."""
    base = escape(f"{endpoint}/assets/")
    scripts = "\n".join(f'<script src="{base}{name}"></script>' for name in _SCRIPTS)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>chat-service GraphQL</title>
<link rel="stylesheet" href="{base}graphiql.min.css">
<style>html,body,#graphiql{{height:100%;margin:0}}</style>
</head>
<body>
<div id="graphiql">Loading GraphiQL...</div>
{scripts}
<script>
// Headers (Authorization: Bearer ...) go in GraphiQL's Headers tab; saved in this browser.
const fetcher = GraphiQL.createFetcher({{url: {endpoint!r}}});
ReactDOM.createRoot(document.getElementById("graphiql")).render(
  React.createElement(GraphiQL, {{fetcher, defaultEditorToolsVisibility: "headers",
    defaultHeaders: '{{"Authorization": "Bearer <token from chat-token>"}}'}}));
</script>
</body>
</html>
"""


def add_asset_routes(app: web.Application, endpoint: str) -> None:
    """Serves the vendored files under ``{endpoint}/assets/``, cached for a day."""
    files: dict[str, tuple[bytes, str]] = {}
    for path in ASSETS.glob("*.gz"):
        name = path.name.removesuffix(".gz")
        kind = _TYPES.get(pathlib.PurePath(name).suffix)
        if kind is not None:
            files[name] = (path.read_bytes(), kind)

    async def serve(request: web.Request) -> web.Response:
        found = files.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        body, kind = found
        return web.Response(body=body, content_type=kind,
                            headers={"Cache-Control": "public, max-age=86400",
                                     hdrs.CONTENT_ENCODING: "gzip"})

    app.router.add_get(f"{endpoint}/assets/{{name}}", serve)
