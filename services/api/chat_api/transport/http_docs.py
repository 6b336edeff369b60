"""``/docs``: the OpenAPI document rendered as one static HTML page, with no internet needed.

Swagger UI and friends load their scripts from a CDN (or ship megabytes of them); a reader of
this small API needs the routes, their parameters and the JSON shapes, which plain HTML shows.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

_STYLE = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}
code,pre{background:#f4f4f4;padding:.1rem .3rem}pre{padding:.6rem;overflow:auto}
.verb{font-weight:bold;display:inline-block;min-width:4rem}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left}"""


def _ref_name(schema: dict[str, Any]) -> str:
    ref = schema.get("$ref", "")
    return ref.rsplit("/", 1)[-1] if ref else json.dumps(schema)


def docs_html(doc: dict[str, Any]) -> str:
    """One page: each operation with its parameters and body/response schemas, then schemas."""
    info = doc["info"]
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(info['title'])}"
           f"</title><style>{_STYLE}</style></head><body>",
           f"<h1>{escape(info['title'])}</h1><p>{escape(info.get('description', ''))}</p>",
           "<p>Every call needs <code>Authorization: Bearer &lt;JWT&gt;</code>. "
           "Machine-readable: <a href='/openapi.json'>/openapi.json</a>.</p><h2>Operations</h2>"]
    for path, ops in doc["paths"].items():
        for verb, op in ops.items():
            out.append(f"<h3 id='{escape(op['operationId'])}'><span class='verb'>"
                       f"{escape(verb.upper())}</span> <code>{escape(path)}</code> "
                       f"({escape(op['operationId'])})</h3>")
            params = op.get("parameters", [])
            if params:
                out.append("<table><tr><th>parameter</th><th>in</th><th>schema</th></tr>")
                out.extend(f"<tr><td><code>{escape(p['name'])}</code></td><td>{escape(p['in'])}"
                           f"</td><td><code>{escape(json.dumps(p['schema']))}</code></td></tr>"
                           for p in params)
                out.append("</table>")
            body = op.get("requestBody")
            if body:
                name = _ref_name(body["content"]["application/json"]["schema"])
                out.append(f"<p>Body: <a href='#{escape(name)}'>{escape(name)}</a></p>")
            ok = _ref_name(op["responses"]["200"]["content"]["application/json"]["schema"])
            out.append(f"<p>200: <a href='#{escape(ok)}'>{escape(ok)}</a>; errors: "
                       "<a href='#google.rpc.Status'>google.rpc.Status</a></p>")
    out.append("<h2>Schemas</h2>")
    for name, schema in doc["components"]["schemas"].items():
        out.append(f"<h3 id='{escape(name)}'>{escape(name)}</h3>"
                   f"<pre>{escape(json.dumps(schema, indent=2))}</pre>")
    out.append("</body></html>")
    return "\n".join(out)
