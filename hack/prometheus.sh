#!/usr/bin/env bash
# Provides a real Prometheus server for integration tests and prints the path
# of its binary (the Makefile passes it to tests as COUCHESTOR_PROMETHEUS).
#
# 1. A `prometheus` on PATH (or /usr/bin/prometheus) is used at once.
# 2. A copy built earlier by this script (cache, keyed by version) is used at once.
# 3. Otherwise Debian's package: `apt-get update && apt-get install -y prometheus`
#    (Prometheus 2.42; seconds where apt works; needs root or sudo).
# 4. Otherwise it is built from source, github.com/prometheus/prometheus
#    v0.316.0 (= Prometheus 3.x) in a throw-away tools module (about 14 min on
#    2 busy cores, the first time only).
#
# Progress goes to stderr; the only line on stdout is the binary's path.
set -euo pipefail

PROM_MODULE_VERSION=v0.316.0
CACHE=${COUCHESTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/couchestor}
DEST="$CACHE/prometheus/$PROM_MODULE_VERSION"

log() { printf '[prometheus] %s\n' "$*" >&2; }

if p=$(command -v prometheus 2>/dev/null) && [ -x "$p" ]; then echo "$p"; exit 0; fi
if [ -x /usr/bin/prometheus ]; then echo /usr/bin/prometheus; exit 0; fi
if [ -x "$DEST/prometheus" ]; then echo "$DEST/prometheus"; exit 0; fi

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; }; then
  log "installing Debian's prometheus package"
  # The package's postinst tries to start a service; there is no init here and
  # tests run their own process, so a failing service start is not fatal.
  if $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 \
     && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >&2; then
    if [ -x /usr/bin/prometheus ]; then echo /usr/bin/prometheus; exit 0; fi
  fi
  log "apt-get could not install prometheus; building from source instead"
fi

log "building Prometheus ($PROM_MODULE_VERSION) from the Go module proxy (first time only, ~14 min)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$DEST"
cat >"$work/go.mod" <<MOD
module couchestor.local/prometheus-build

go 1.26
MOD
cat >"$work/tools.go" <<'GO'
//go:build tools

package tools

import _ "github.com/prometheus/prometheus/cmd/prometheus"
GO
(cd "$work" \
  && go get "github.com/prometheus/prometheus@$PROM_MODULE_VERSION" >&2 \
  && go mod tidy >&2 \
  && CGO_ENABLED=0 go build -trimpath -o "$DEST/prometheus.tmp" github.com/prometheus/prometheus/cmd/prometheus >&2)
mv -f "$DEST/prometheus.tmp" "$DEST/prometheus"
echo "$DEST/prometheus"
