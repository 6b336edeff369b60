#!/bin/sh
# Makes services/api/chat_api/transport/graphiql_assets/ again: GraphiQL 3 (the last major
# version with a browser build that needs no bundler) and React 18's browser builds, from their
# npm packages, gzipped (the API sends them as they are, with Content-Encoding: gzip).
# graphiql's "min" build is webpack's unminified bundle; terser makes it 1.5 MB (400 KB gzipped).
# Needs node and npm; run from the repository root.
set -eu
OUT="$(pwd)/services/api/chat_api/transport/graphiql_assets"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
npm pack --silent graphiql@3.8.3 react@18.3.1 react-dom@18.3.1 >/dev/null
for f in *.tgz; do mkdir "${f%.tgz}"; tar xzf "$f" -C "${f%.tgz}"; done
npm install --silent --no-audit --no-fund terser@5 >/dev/null
node_modules/.bin/terser graphiql-3.8.3/package/graphiql.min.js -c -m -o graphiql.min.js
mkdir -p "$OUT"
gzip -9 -n -c graphiql.min.js > "$OUT/graphiql.min.js.gz"
gzip -9 -n -c graphiql-3.8.3/package/graphiql.min.css > "$OUT/graphiql.min.css.gz"
gzip -9 -n -c react-18.3.1/package/umd/react.production.min.js > "$OUT/react.production.min.js.gz"
gzip -9 -n -c react-dom-18.3.1/package/umd/react-dom.production.min.js \
  > "$OUT/react-dom.production.min.js.gz"
{
  echo "GraphiQL 3.8.3 (npm package graphiql), MIT:"; cat graphiql-3.8.3/package/LICENSE; echo
  echo "React 18.3.1 and ReactDOM 18.3.1 (npm packages react, react-dom), MIT:"
  cat react-18.3.1/package/LICENSE
} > "$OUT/LICENSES.txt"
echo "wrote $OUT"
