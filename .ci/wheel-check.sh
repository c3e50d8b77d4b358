#!/usr/bin/env bash
# The wheel works without the source tree: build it, install it into a fresh venv, and from an unrelated
# directory run a bundled graph (by name and by the installed path, with its image assets) and serve the editor.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WORK=$(mktemp -d)
trap 'if [ -n "${SERVER:-}" ]; then kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true; fi; rm -rf "$WORK"' EXIT
rm -rf dist
python3 -m pip wheel . -w dist --no-deps -q
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q torch==2.13.0
"$WORK/venv/bin/pip" install -q "$ROOT"/dist/ipgraph-*.whl
cd "$WORK"
PY="$WORK/venv/bin/python"
IPG="$WORK/venv/bin/ipgraph"
for name in engine nodes server graphs tests bench; do
    if "$PY" -c "import $name" 2>/dev/null; then echo "wheel-check: top-level module '$name' is installed" >&2; exit 1; fi
done
"$IPG" graphs >/dev/null
"$IPG" nodes > nodes.txt  # read from the node catalogue shipped in the wheel
grep -q "^KSampler " nodes.txt || { echo "wheel-check: ipgraph nodes lists no KSampler (node catalogue?)" >&2; exit 1; }
"$IPG" run txt2img --models-dir models --output-dir out
GRAPH=$("$PY" -c "from ipgraph.graphs import bundled; print(bundled()['ipadapter_txt2img'])")
case "$GRAPH" in "$ROOT"*) echo "wheel-check: graphs come from the source tree ($GRAPH)" >&2; exit 1;; esac
"$IPG" run "$GRAPH" --models-dir models --output-dir out
ls out/*.png >/dev/null
PORT=$("$PY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
"$IPG" serve --port "$PORT" --data-dir data --models-dir models --log-level warning &
SERVER=$!
for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$PORT/ipgraph/graphs" >/dev/null 2>&1 && break
    sleep 1
done
curl -sf "http://127.0.0.1:$PORT/" | grep -qi "<html" || { echo "wheel-check: the web editor is not served" >&2; exit 1; }
curl -sf "http://127.0.0.1:$PORT/ipgraph/graphs" | grep -q "txt2img" || { echo "wheel-check: no bundled graphs" >&2; exit 1; }
curl -sf "http://127.0.0.1:$PORT/object_info" | grep -q "KSampler" || { echo "wheel-check: no object_info" >&2; exit 1; }
echo "wheel-check: ok"
