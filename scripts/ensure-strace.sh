#!/usr/bin/env bash
# Makes strace available for tests/test_flush_kills.py, which kills `crm` at each flush it asks
# for (strace's fault injection). Idempotent: a strace that already works is left alone. Otherwise
# installs Debian's strace package (needs root and apt-get). Outside CI a machine without it only
# gets a warning, and those tests skip saying why; under CI=true that is an error.
set -euo pipefail

SETUP_NAME=ensure-strace
SETUP_WITHOUT="strace: tests/test_flush_kills.py will be skipped"
# shellcheck source=setup-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup-lib.sh"

if ! command -v strace >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    say "installing strace with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q strace >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q strace >/dev/null; } \
      || give_up "apt-get could not install strace"
  else
    give_up "strace is not installed, and this user cannot install it (needs root and apt-get)"
  fi
fi
if ! strace -f -qq -o /dev/null true 2>/dev/null; then
  give_up "strace is installed but cannot trace here (ptrace refused: a container without SYS_PTRACE?)"
fi
say "$(strace -V | head -n 1)"
