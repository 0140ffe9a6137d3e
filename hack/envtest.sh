#!/usr/bin/env bash
# Provides kube-apiserver, etcd and kubectl for controller-runtime's envtest
# and prints the directory that holds them (use it as KUBEBUILDER_ASSETS).
#
# 1. A cached copy keyed by version (outside the checkout) is used at once.
# 2. Otherwise setup-envtest is tried (works wherever its download site is reachable).
# 3. Otherwise the binaries are built from the Go module proxy in the tools
#    modules under hack/tools (kube-apiserver ~8 min on 2 cores, kubectl ~1 min,
#    etcd ~1 min, the first time only).
#
# Progress goes to stderr; the only line on stdout is the assets directory.
set -euo pipefail

K8S_VERSION=1.37.2
ETCD_VERSION=3.6.16
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${COUCHESTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/couchestor}
DEST="$CACHE/envtest/k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}"

log() { printf '[envtest] %s\n' "$*" >&2; }

complete() {
  [ -x "$1/kube-apiserver" ] && [ -x "$1/etcd" ] && [ -x "$1/kubectl" ]
}

if complete "$DEST"; then
  echo "$DEST"
  exit 0
fi
mkdir -p "$DEST"

# One builder at a time (two test runs started together on a cold machine
# would otherwise write the same .tmp files); the second waits, then finds
# the binaries complete.
exec 9>"$CACHE/envtest/.lock"
flock 9
if complete "$DEST"; then
  echo "$DEST"
  exit 0
fi

# setup-envtest first: it is what users elsewhere expect and it is fast there.
if [ -z "${COUCHESTOR_SKIP_SETUP_ENVTEST:-}" ]; then
  log "trying setup-envtest for Kubernetes ${K8S_VERSION} (needs its download site)"
  if out=$(timeout 120 go run sigs.k8s.io/controller-runtime/tools/setup-envtest@latest \
        use "${K8S_VERSION}" --bin-dir "$CACHE/setup-envtest" -p path 2>/dev/null) \
     && [ -n "$out" ] && complete "$out"; then
    cp -f "$out"/kube-apiserver "$out"/etcd "$out"/kubectl "$DEST"/
    log "setup-envtest provided the binaries"
    echo "$DEST"
    exit 0
  fi
  log "setup-envtest could not download; building from the Go module proxy instead"
fi

build() { # name module-dir package
  local name=$1 dir=$2 pkg=$3 start=$SECONDS
  if [ -x "$DEST/$name" ]; then return 0; fi
  log "building $name from $pkg (first time only; see README for timings)"
  (cd "$ROOT/hack/tools/$dir" && CGO_ENABLED=0 go build -trimpath -o "$DEST/$name.tmp" "$pkg")
  mv -f "$DEST/$name.tmp" "$DEST/$name"
  log "built $name in $((SECONDS - start))s"
}

build etcd etcd .
build kube-apiserver controlplane k8s.io/kubernetes/cmd/kube-apiserver
build kubectl controlplane k8s.io/kubernetes/cmd/kubectl

complete "$DEST"
echo "$DEST"
