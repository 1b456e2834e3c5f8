#!/usr/bin/env bash
# Installs the real Toxiproxy server (pinned v2 tag) into .tools/bin with the machine's Go.
# Idempotent: does nothing when the pinned version is already there.
set -euo pipefail
TOXIPROXY_VERSION="${TOXIPROXY_VERSION:-v2.12.0}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/.tools/bin"
TARGET="$BIN/toxiproxy-server"
if [ -x "$TARGET" ] && "$TARGET" --version 2>/dev/null | grep -q "${TOXIPROXY_VERSION#v}"; then
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "install-toxiproxy: Go is needed to build Toxiproxy ${TOXIPROXY_VERSION} and was not found on PATH" >&2
  exit 1
fi
mkdir -p "$BIN"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "install-toxiproxy: building github.com/Shopify/toxiproxy/v2/cmd/server@${TOXIPROXY_VERSION}" >&2
GOBIN="$tmp" GOFLAGS="-trimpath" go install \
  -ldflags "-X github.com/Shopify/toxiproxy/v2.Version=${TOXIPROXY_VERSION#v}" \
  "github.com/Shopify/toxiproxy/v2/cmd/server@${TOXIPROXY_VERSION}"
mv "$tmp/server" "$TARGET"
"$TARGET" --version >&2
