#!/usr/bin/env bash
# Installs the pinned Yjs packages (fixtures/engines/yjs/package-lock.json) into
# fixtures/engines/yjs/node_modules (gitignored) with npm ci, for the Yjs worked example
# (docs/engines/yjs.md). Idempotent: does nothing when that lock file is already installed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$ROOT/fixtures/engines/yjs"
STAMP="$DIR/node_modules/.installed-lock.sha256"
want="$(sha256sum "$DIR/package-lock.json" | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "install-yjs: npm (Node 18 or later) is needed and was not found on PATH" >&2
  exit 1
fi
# --ignore-scripts: the LevelDB bindings ship prebuilt binaries, so no package needs to build.
(cd "$DIR" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
echo "$want" > "$STAMP"
