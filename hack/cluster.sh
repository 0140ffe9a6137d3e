#!/usr/bin/env bash
# A real single-node Kubernetes on this machine, for the tests (tests/cluster)
# and by hand: `make cluster-up` / `make cluster-down`.
#
#   hack/cluster.sh bins   build (once, cached by version) and print the binary directory
#   hack/cluster.sh helm   build the helm CLI (once, cached by version) and print its path
#   hack/cluster.sh up     start the cluster, wait for the node to be Ready, print the kubeconfig path
#   hack/cluster.sh down   stop everything and remove what `up` created (also after a crash or SIGKILL)
#   hack/cluster.sh guard  print the packets the guard rules dropped (must stay 0)
#   hack/cluster.sh can    exit 0 when this machine can run the cluster, else print why
#   hack/cluster.sh cached exit 0 when every binary above is built (cached), else print which is not
#   hack/cluster.sh csi-can exit 0 when the CSI sidecars can be built here, else print why
#   hack/cluster.sh csi-images  build the CSI sidecars (once, cached by version) and the
#                          node-plugin image; write their image archives, print their directory
#                          (`up` imports every archive of $COUCHESTOR_CLUSTER_EXTRA_IMAGES)
#
# containerd, etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubelet and kube-proxy run as plain processes (PIDs recorded under the run
# directory) with a throwaway CA. Images come from files (`make image` and a
# pause program), never from a registry. Every packet stays on the machine:
# pods sit on the run's own bridge with no default route, and guard rules drop
# anything from or to the pod and Service ranges that would leave through
# another interface. ../shared/CLUSTER.md (in the workplace) explains each
# setting; the comments here say which failure it prevents.
#
# Progress goes to stderr; stdout carries only the result line.
set -euo pipefail

K8S_VERSION=1.37.2
CRICTL_VERSION=1.37.0
HELM_VERSION=4.3.2
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${COUCHESTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/couchestor}
BINDIR="$CACHE/cluster/k8s-${K8S_VERSION}-crictl-${CRICTL_VERSION}"
HELMDIR="$CACHE/helm/v${HELM_VERSION}"
RUN=${COUCHESTOR_CLUSTER_DIR:-/var/tmp/couchestor-cluster}

NODE=couchestor-node
BRIDGE=cni0
NODE_IP=10.244.0.1
POD_CIDR=10.244.0.0/24
SVC_CIDR=10.96.0.0/24
API_SVC_IP=10.96.0.1
ETCD_PORT=23790
ETCD_PEER_PORT=23800
API_PORT=6443
GUARD=COUCHESTOR-GUARD
PAUSE_IMAGE=couchestor.local/pause:1
SYSCTLS=(vm.overcommit_memory=1 kernel.panic=10 kernel.panic_on_oops=1 net.ipv4.ip_forward=1)
# Host paths the stack writes whatever its flags say; removed on down when up created them.
HOST_PATHS=(/var/log/containers /var/log/pods /var/lib/cni /run/containerd /etc/cni)

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- binaries

ldflags() {
  local v=k8s.io/component-base/version c=k8s.io/client-go/pkg/version x
  x="-s -w"
  for p in $v $c; do
    x+=" -X $p.gitVersion=v${K8S_VERSION} -X $p.gitMajor=${K8S_VERSION%%.*}"
    x+=" -X $p.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2) -X $p.gitTreeState=clean"
    x+=" -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$x"
}

build_one() { # dest module-dir package [ldflags]
  local dest=$1 dir=$2 pkg=$3 flags=${4:-} start=$SECONDS
  [ -x "$dest" ] && return 0
  log "building $(basename "$dest") from $pkg (first time only)"
  (cd "$dir" && CGO_ENABLED=0 go build -trimpath -ldflags "$flags" -o "$dest.tmp" "$pkg")
  mv -f "$dest.tmp" "$dest"
  log "built $(basename "$dest") in $((SECONDS - start))s"
}

cmd_bins() {
  mkdir -p "$BINDIR"
  local fl; fl=$(ldflags)
  # kubelet first: the longest; the others reuse most of its packages.
  for c in kubelet kube-proxy kube-scheduler kube-controller-manager; do
    build_one "$BINDIR/$c" "$ROOT/hack/cluster/tools" "k8s.io/kubernetes/cmd/$c" "$fl"
  done
  build_one "$BINDIR/crictl" "$ROOT/hack/cluster/crictl" sigs.k8s.io/cri-tools/cmd/crictl "-s -w"
  build_one "$BINDIR/pause" "$ROOT" ./hack/cluster/pause "-s -w"
  build_one "$BINDIR/cluster-dns" "$ROOT/hack/cluster/dns" . "-s -w"
  local envtest; envtest=$("$ROOT/hack/envtest.sh")
  for c in kube-apiserver etcd kubectl; do ln -sfn "$envtest/$c" "$BINDIR/$c"; done
  echo "$BINDIR"
}

cmd_helm() {
  mkdir -p "$HELMDIR"
  build_one "$HELMDIR/helm" "$ROOT/hack/cluster/helm" helm.sh/helm/v4/cmd/helm \
    "-s -w -X helm.sh/helm/v4/internal/version.version=v${HELM_VERSION}"
  echo "$HELMDIR/helm"
}

# ---------------------------------------------------------------- CSI images

# The CSI sidecars the install chart names (csi.sidecars.*.image), built from
# source and packed under those names, so the cluster never pulls. The
# external-provisioner and external-resizer build from the Go module proxy
# in tools modules of their own (hack/cluster/csi-*, carrying the sidecars'
# own replace directives, which `go install pkg@version` refuses).
# node-driver-registrar and livenessprobe cannot come from the proxy by
# version at all: their go.mod says `module .../node-driver-registrar` (no
# /v2) while their tags are v2.x, so v2.15.0/v2.17.0 are not valid module
# versions (the proxy answers 403/invalid). They build from their git tag
# (commit checked below) with the vendor/ directory the tag carries, so the
# build fetches nothing else. $COUCHESTOR_GIT_MIRROR: a directory holding
# OWNER+NAME/repo git copies to clone from instead of github.com.
CSI_GIT_COMMITS=(
  "node-driver-registrar v2.15.0 87d60a92e312fefe7965ccf2c2b88d6184e30077"
  "livenessprobe v2.17.0 064a1024b6280bd5c57b936afee96e441208d7af"
)
CSIDIR="$CACHE/csi-sidecars"

chart_sidecars() { # name:version of every sidecar image the chart names
  grep -o 'registry.k8s.io/sig-storage/[a-z-]*:v[0-9.]*' "$ROOT/helm-charts/couchestor/values.yaml" | sed 's|.*/||' | sort -u
}

git_source() { # REPO TAG COMMIT DEST: the tag's tree, checked against the pinned commit
  local repo=$1 tag=$2 commit=$3 dest=$4 url="https://github.com/kubernetes-csi/$1"
  [ -f "$dest/.commit" ] && [ "$(cat "$dest/.commit")" = "$commit" ] && return 0
  [ -n "${COUCHESTOR_GIT_MIRROR:-}" ] && url="$COUCHESTOR_GIT_MIRROR/kubernetes-csi+$repo/repo"
  rm -rf "$dest.tmp"
  git -c advice.detachedHead=false clone -q --depth 1 --branch "$tag" "$url" "$dest.tmp" >&2 || die "clone $url at $tag"
  local got; got=$(git -C "$dest.tmp" rev-parse HEAD)
  [ "$got" = "$commit" ] || die "$url tag $tag is commit $got, not the pinned $commit"
  echo "$commit" >"$dest.tmp/.commit"
  rm -rf "$dest"; mv "$dest.tmp" "$dest"
}

csi_sidecar() { # NAME VERSION: build once, print the binary
  local name=$1 ver=$2 out="$CSIDIR/$1-$2/$1" fl="-s -w -X main.version=$2"
  if [ ! -x "$out" ]; then
    mkdir -p "$(dirname "$out")"
    case "$name" in
      csi-provisioner|csi-resizer)
        local mod=external-provisioner/v5
        [ "$name" = csi-resizer ] && mod=external-resizer
        grep -q "^require github.com/kubernetes-csi/$mod $ver\$" "$ROOT/hack/cluster/$name/go.mod" \
          || die "hack/cluster/$name/go.mod does not pin $ver, the chart's tag of $name"
        build_one "$out" "$ROOT/hack/cluster/$name" "github.com/kubernetes-csi/$mod/cmd/$name" "$fl" ;;
      csi-node-driver-registrar|livenessprobe)
        local repo=${name#csi-} line commit=""
        for line in "${CSI_GIT_COMMITS[@]}"; do
          set -- $line
          [ "$1" = "$repo" ] && [ "$2" = "$ver" ] && commit=$3
        done
        [ -n "$commit" ] || die "no pinned commit for $repo $ver (CSI_GIT_COMMITS in hack/cluster.sh)"
        git_source "$repo" "$ver" "$commit" "$CSIDIR/src/$repo-$ver"
        local start=$SECONDS
        log "building $name $ver from its tag (vendored, first time only)"
        (cd "$CSIDIR/src/$repo-$ver" && CGO_ENABLED=0 go build -mod=vendor -trimpath -ldflags "$fl" -o "$out.tmp" "./cmd/$name")
        mv -f "$out.tmp" "$out"
        log "built $name in $((SECONDS - start))s" ;;
      *) die "unknown CSI sidecar $name in the chart's values" ;;
    esac
  fi
  echo "$out"
}

cmd_csi_images() {
  local dir="$CACHE/csi-images" nv name ver bin fs
  mkdir -p "$dir"
  for nv in $(chart_sidecars); do
    name=${nv%%:*} ver=${nv#*:}
    bin=$(csi_sidecar "$name" "$ver")
    if [ ! -f "$dir/$name-$ver.tar" ]; then
      fs=$(mktemp -d); mkdir -p "$fs/tmp"; chmod 1777 "$fs/tmp"; cp "$bin" "$fs/$name"
      (cd "$ROOT/hack/image" && go run . --rootfs "$fs" --entrypoint "/$name" --tag "registry.k8s.io/sig-storage/$name:$ver" \
        --title "$name" --out "$dir/$name-$ver.tar.tmp" >&2)
      rm -rf "$fs"; mv -f "$dir/$name-$ver.tar.tmp" "$dir/$name-$ver.tar"
    fi
  done
  # The CSI steps' workload (hack/cluster/treeio): writes and reads files.
  local tio; tio="$CSIDIR/treeio-$(cat "$ROOT"/hack/cluster/treeio/*.go | sha256sum | cut -c1-12)"
  build_one "$tio" "$ROOT" ./hack/cluster/treeio "-s -w"
  fs=$(mktemp -d); mkdir -p "$fs/tmp"; chmod 1777 "$fs/tmp"; cp "$tio" "$fs/treeio"
  (cd "$ROOT/hack/image" && go run . --rootfs "$fs" --entrypoint /treeio --tag "$TREEIO_IMAGE" --title treeio --out "$dir/treeio.tar" >&2)
  rm -rf "$fs"
  # The node plugin's image holds this tree's binary: built every time.
  "$ROOT/hack/csi-node-image.sh" "$dir/csi-node.tar" "$CSI_NODE_IMAGE" >&2
  echo "$dir"
}
CSI_NODE_IMAGE=couchestor.local/couchestor-csi-node:dev
TREEIO_IMAGE=couchestor.local/treeio:1

# cmd_csi_can: the sidecars built from git tags need their sources: cached,
# in $COUCHESTOR_GIT_MIRROR, or reachable on github.com. Exit 0 when all are.
cmd_csi_can() {
  local line repo ver commit
  for line in "${CSI_GIT_COMMITS[@]}"; do
    set -- $line
    repo=$1 ver=$2 commit=$3
    [ -f "$CSIDIR/src/$repo-$ver/.commit" ] && [ "$(cat "$CSIDIR/src/$repo-$ver/.commit")" = "$commit" ] && continue
    [ -n "${COUCHESTOR_GIT_MIRROR:-}" ] && [ -d "$COUCHESTOR_GIT_MIRROR/kubernetes-csi+$repo/repo" ] && continue
    timeout 20 git ls-remote --exit-code "https://github.com/kubernetes-csi/$repo" "refs/tags/$ver" >/dev/null 2>&1 && continue
    echo "$repo $ver is not a valid Go module version (its go.mod lacks /v2), so it builds only from its git tag, and github.com/kubernetes-csi/$repo is unreachable from this machine and not in \$COUCHESTOR_GIT_MIRROR"
    return 1
  done
  return 0
}

# cmd_cached: exit 0 when every binary the cluster suite builds is cached
# (nothing left to compile but the project itself), else print what is not.
cmd_cached() {
  local missing=() c nv
  for c in kubelet kube-proxy kube-scheduler kube-controller-manager crictl pause cluster-dns; do
    [ -x "$BINDIR/$c" ] || missing+=("$c")
  done
  [ -x "$HELMDIR/helm" ] || missing+=(helm)
  for nv in $(chart_sidecars); do
    [ -x "$CSIDIR/${nv%%:*}-${nv#*:}/${nv%%:*}" ] || missing+=("${nv%%:*}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "not built yet: ${missing[*]}"
  return 1
}

# ---------------------------------------------------------------- checks

cmd_can() {
  [ "$(id -u)" = 0 ] || { echo "not root (the cluster needs root: containerd, bridge, iptables, cgroups)"; return 1; }
  [ "$(uname -s)" = Linux ] || { echo "not Linux"; return 1; }
  if ! have_packages && ! command -v apt-get >/dev/null; then
    echo "containerd/runc/CNI plugins/iptables missing and no apt-get to install them"; return 1
  fi
  command -v openssl >/dev/null || { echo "no openssl (for the throwaway CA)"; return 1; }
  [ -d /sys/fs/cgroup ] || { echo "no /sys/fs/cgroup"; return 1; }
  if ip link show "$BRIDGE" >/dev/null 2>&1 && [ ! -d "$RUN" ]; then
    echo "interface $BRIDGE exists and is not ours (another cluster on this machine?)"; return 1
  fi
  return 0
}

have_packages() {
  command -v containerd >/dev/null && command -v runc >/dev/null && command -v ctr >/dev/null \
    && [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/loopback ] \
    && command -v iptables >/dev/null && command -v conntrack >/dev/null && command -v nft >/dev/null
}

packages() {
  have_packages && return 0
  log "installing containerd runc containernetworking-plugins iptables conntrack nftables (apt)"
  local pk=(containerd runc containernetworking-plugins iptables conntrack nftables)
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${pk[@]}" >&2 \
    || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${pk[@]}" >&2; }
  have_packages || die "packages still missing after apt-get install"
}

# ---------------------------------------------------------------- processes

# start NAME CMD...: runs CMD in its own session, logs to $RUN/logs/NAME.log,
# records "PID STARTTIME" so down never kills a recycled PID.
start() {
  local name=$1; shift
  setsid "$@" </dev/null >"$RUN/logs/$name.log" 2>&1 &
  local pid=$!
  echo "$pid $(starttime "$pid")" >"$RUN/pids/$name"
}

starttime() { awk '{print $22}' "/proc/$1/stat" 2>/dev/null || true; }

alive() { # NAME
  local f="$RUN/pids/$1" pid st
  [ -f "$f" ] || return 1
  read -r pid st <"$f"
  [ -n "$pid" ] && [ -n "$st" ] && [ "$(starttime "$pid")" = "$st" ]
}

stop() { # NAME: SIGTERM, then SIGKILL after 20 s, by recorded PID only
  local f="$RUN/pids/$1" pid st i
  [ -f "$f" ] || return 0
  read -r pid st <"$f"
  if alive "$1"; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 200); do alive "$1" || break; sleep 0.1; done
    if alive "$1"; then log "$1 ($pid) ignored SIGTERM for 20s; SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
    for i in $(seq 50); do alive "$1" || break; sleep 0.1; done
  fi
  rm -f "$f"
}

wait_for() { # DESCRIPTION SECONDS CMD...
  local what=$1 secs=$2 i; shift 2
  for i in $(seq $((secs * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    for n in "$RUN"/pids/*; do
      [ -f "$n" ] || continue
      alive "$(basename "$n")" || { tail -n 30 "$RUN/logs/$(basename "$n").log" >&2 || true; die "$(basename "$n") exited while waiting for $what"; }
    done
    sleep 0.2
  done
  die "timed out after ${secs}s waiting for $what"
}

# ---------------------------------------------------------------- CA

cert() { # NAME CN O SAN(extension value or "")
  local name=$1 cn=$2 o=$3 san=$4 subj="/CN=$2"
  [ -n "$o" ] && subj="/O=$o/CN=$cn"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$RUN/pki/$name.key" -subj "$subj" -out "$RUN/pki/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=serverAuth,clientAuth"
    [ -n "$san" ] && echo "subjectAltName=$san"
  } >"$RUN/pki/$name.ext"
  openssl x509 -req -in "$RUN/pki/$name.csr" -CA "$RUN/pki/ca.crt" -CAkey "$RUN/pki/ca.key" \
    -CAcreateserial -days 7 -extfile "$RUN/pki/$name.ext" -out "$RUN/pki/$name.crt" 2>/dev/null
}

kubeconfig() { # NAME CERT
  cat >"$RUN/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: couchestor
  cluster:
    server: https://${NODE_IP}:${API_PORT}
    certificate-authority: $RUN/pki/ca.crt
users:
- name: $2
  user:
    client-certificate: $RUN/pki/$2.crt
    client-key: $RUN/pki/$2.key
contexts:
- name: couchestor
  context: {cluster: couchestor, user: $2}
current-context: couchestor
EOF
}

pki() {
  mkdir -p "$RUN/pki"
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
    -keyout "$RUN/pki/ca.key" -out "$RUN/pki/ca.crt" -subj "/CN=couchestor-throwaway-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  cert apiserver kube-apiserver "" "IP:${NODE_IP},IP:${API_SVC_IP},IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters ""
  cert admin couchestor-admin system:masters ""
  cert kcm system:kube-controller-manager "" ""
  cert scheduler system:kube-scheduler "" ""
  cert kubelet "system:node:${NODE}" system:nodes ""
  cert kubelet-serving "system:node:${NODE}" system:nodes "IP:${NODE_IP},DNS:${NODE}"
  cert kube-proxy system:kube-proxy "" ""
  cert dns couchestor:cluster-dns "" ""
  openssl ecparam -name prime256v1 -genkey -noout -out "$RUN/pki/sa.key" 2>/dev/null
  openssl ec -in "$RUN/pki/sa.key" -pubout -out "$RUN/pki/sa.pub" 2>/dev/null
  kubeconfig admin admin
  kubeconfig kcm kcm
  kubeconfig scheduler scheduler
  kubeconfig kubelet kubelet
  kubeconfig kube-proxy kube-proxy
}

# ---------------------------------------------------------------- network

real_ifaces() { ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -vx -e lo -e "$BRIDGE" | grep -v '^veth' || true; }

network_up() {
  # The hostname resolves to 127.0.0.1 (the kubelet refuses it) and there is no
  # dummy driver: the CNI bridge, created here, carries the node address.
  ip link add "$BRIDGE" type bridge
  ip addr add "${NODE_IP}/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Host → ClusterIP leaves with the bridge's source address, never eth0's.
  ip route add "$SVC_CIDR" dev "$BRIDGE" src "$NODE_IP"
  # Guard: nothing from or to the pod and Service ranges leaves through any
  # interface but the bridge and loopback.
  iptables -t mangle -N "$GUARD"
  iptables -t mangle -A "$GUARD" -o "$BRIDGE" -j RETURN
  iptables -t mangle -A "$GUARD" -o lo -j RETURN
  for r in "$POD_CIDR" "$SVC_CIDR"; do
    iptables -t mangle -A "$GUARD" -s "$r" -j DROP
    iptables -t mangle -A "$GUARD" -d "$r" -j DROP
  done
  iptables -t mangle -I POSTROUTING 1 -j "$GUARD"
  iptables -t mangle -I FORWARD 1 -j "$GUARD"
  mkdir -p "$RUN/cni/net.d"
  # No default route in pods: the IPAM routes only the Service range (via the
  # bridge gateway); ipMasq off so nothing is NATed towards the outside.
  cat >"$RUN/cni/net.d/10-couchestor.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "couchestor",
  "plugins": [
    {
      "type": "bridge", "bridge": "${BRIDGE}", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$RUN/cni/ipam",
        "ranges": [[{"subnet": "${POD_CIDR}", "gateway": "${NODE_IP}", "rangeStart": "10.244.0.10"}]],
        "routes": [{"dst": "${SVC_CIDR}"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

cmd_guard() {
  iptables -t mangle -L "$GUARD" -v -x -n 2>/dev/null | awk '$3=="DROP" {s+=$1} END {print s+0}'
}

sysctls_up() {
  : >"$RUN/sysctl.saved"
  for kv in "${SYSCTLS[@]}"; do
    local k=${kv%%=*}
    echo "$k=$(sysctl -n "$k")" >>"$RUN/sysctl.saved"
    sysctl -qw "$kv"
  done
}

# ---------------------------------------------------------------- up

cmd_up() {
  local why; why=$(cmd_can) || die "$why"
  if [ -d "$RUN" ]; then log "a previous run left $RUN; cleaning it up first"; cmd_down; fi
  local t0=$SECONDS
  packages
  local bins; bins=$(cmd_bins)
  export PATH="$bins:$PATH"
  mkdir -p "$RUN"/{logs,pids,state}
  # Host paths: remember which existed, so down removes only ours.
  for p in "${HOST_PATHS[@]}"; do [ -e "$p" ] && echo "$p"; done >"$RUN/state/host-paths-before" || true
  ls /run/containerd/s 2>/dev/null >"$RUN/state/shim-sockets-before" || true
  nft list tables 2>/dev/null >"$RUN/state/nft-before" || true
  iptables-save 2>/dev/null | grep -o '^:[^ ]*' >"$RUN/state/chains-before" || true
  sysctls_up
  pki
  network_up
  containerd_up
  images_up

  control_plane_up
  kubelet_up
  kube_proxy_up

  wait_for "node $NODE Ready" 180 kubectl --kubeconfig "$RUN/admin.kubeconfig" wait --for=condition=Ready "node/$NODE" --timeout=1s
  # kube-controller-manager lifts the not-ready taint; pods schedule only then.
  wait_for "node $NODE without taints" 120 node_untainted
  wait_for "default ServiceAccount" 120 kubectl --kubeconfig "$RUN/admin.kubeconfig" -n default get serviceaccount default
  log "node $NODE Ready in $((SECONDS - t0))s (kubeconfig: $RUN/admin.kubeconfig; stop with hack/cluster.sh down)"
  echo "$RUN/admin.kubeconfig"
}

control_plane_up() {
  start etcd etcd --name couchestor --data-dir "$RUN/etcd" \
    --listen-client-urls "http://127.0.0.1:${ETCD_PORT}" --advertise-client-urls "http://127.0.0.1:${ETCD_PORT}" \
    --listen-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-cluster "couchestor=http://127.0.0.1:${ETCD_PEER_PORT}" --listen-metrics-urls "" \
    --unsafe-no-fsync
  wait_for etcd 60 curl -fsS "http://127.0.0.1:${ETCD_PORT}/health"

  start kube-apiserver kube-apiserver --etcd-servers "http://127.0.0.1:${ETCD_PORT}" \
    --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port "$API_PORT" \
    --tls-cert-file "$RUN/pki/apiserver.crt" --tls-private-key-file "$RUN/pki/apiserver.key" \
    --client-ca-file "$RUN/pki/ca.crt" \
    --kubelet-client-certificate "$RUN/pki/apiserver-kubelet-client.crt" --kubelet-client-key "$RUN/pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$RUN/pki/ca.crt" --kubelet-preferred-address-types InternalIP \
    --service-account-key-file "$RUN/pki/sa.pub" --service-account-signing-key-file "$RUN/pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range "$SVC_CIDR" --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction --allow-privileged=true --profiling=false \
    --cert-dir "$RUN/pki/apiserver-certs"
  wait_for kube-apiserver 120 kubectl --kubeconfig "$RUN/admin.kubeconfig" get --raw /readyz
  dns_up

  start kube-controller-manager kube-controller-manager --kubeconfig "$RUN/kcm.kubeconfig" \
    --authentication-kubeconfig "$RUN/kcm.kubeconfig" --authorization-kubeconfig "$RUN/kcm.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 10257 --leader-elect=false --use-service-account-credentials \
    --cluster-signing-cert-file "$RUN/pki/ca.crt" --cluster-signing-key-file "$RUN/pki/ca.key" \
    --root-ca-file "$RUN/pki/ca.crt" --service-account-private-key-file "$RUN/pki/sa.key" \
    --service-cluster-ip-range "$SVC_CIDR" --flex-volume-plugin-dir "$RUN/kcm-flexvolume" \
    --cert-dir "$RUN/pki/kcm-certs" --profiling=false
  start kube-scheduler kube-scheduler --kubeconfig "$RUN/scheduler.kubeconfig" \
    --authentication-kubeconfig "$RUN/scheduler.kubeconfig" --authorization-kubeconfig "$RUN/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 10259 --leader-elect=false --profiling=false \
    --cert-dir "$RUN/pki/scheduler-certs"

}

# The cluster DNS (hack/cluster/dns, a CoreDNS stand-in): Services and
# StatefulSet pod hostnames under cluster.local, read with its own identity
# that may only list Services and EndpointSlices; never forwards.
dns_up() {
  kubectl --kubeconfig "$RUN/admin.kubeconfig" apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "couchestor:cluster-dns"}
rules:
- {apiGroups: [""], resources: [services], verbs: [list]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "couchestor:cluster-dns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "couchestor:cluster-dns"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "couchestor:cluster-dns"}
EOF
  start cluster-dns cluster-dns -listen "${NODE_IP}:53" -api "https://${NODE_IP}:${API_PORT}" \
    -ca "$RUN/pki/ca.crt" -cert "$RUN/pki/dns.crt" -key "$RUN/pki/dns.key" -domain cluster.local
}

node_untainted() {
  [ -z "$(kubectl --kubeconfig "$RUN/admin.kubeconfig" get node "$NODE" -o jsonpath='{.spec.taints}')" ]
}

containerd_up() {
  local c="$RUN/containerd"
  mkdir -p "$c"/{root,state,opt,certs.d}
  # Every registry points at an unreachable loopback address: nothing is ever pulled.
  for reg in _default docker.io registry.k8s.io ghcr.io quay.io gcr.io couchestor.local; do
    mkdir -p "$c/certs.d/$reg"
    printf 'server = "https://127.0.0.1:9"\n[host."https://127.0.0.1:9"]\n  capabilities = ["pull", "resolve"]\n' >"$c/certs.d/$reg/hosts.toml"
  done
  cat >"$c/config.toml" <<EOF
version = 2
root = "$c/root"
state = "$c/state"
[grpc]
  address = "$c/containerd.sock"
[ttrpc]
  address = "$c/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$c/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # root lacks CAP_SYS_RESOURCE here: without this every sandbox fails in runc
  # ("failed to update /proc/self/oom_score_adj: Permission denied").
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$c/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$RUN/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$c/certs.d"
EOF
  start containerd containerd --config "$c/config.toml"
  wait_for containerd 60 ctr --address "$c/containerd.sock" version
}

images_up() {
  local c="$RUN/containerd/containerd.sock" img="$RUN/images"
  mkdir -p "$img/pause/layer"
  # The pause image as a docker archive: one layer with the static program.
  cp "$BINDIR/pause" "$img/pause/layer/pause"
  tar --numeric-owner --owner=0 --group=0 --mtime=@0 -C "$img/pause/layer" -cf "$img/pause/layer.tar" pause
  local diff; diff=$(sha256sum "$img/pause/layer.tar" | cut -d' ' -f1)
  cat >"$img/pause/config.json" <<EOF
{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/pause"],"User":"65535:65535"},"rootfs":{"type":"layers","diff_ids":["sha256:$diff"]}}
EOF
  local cfg; cfg=$(sha256sum "$img/pause/config.json" | cut -d' ' -f1)
  mv "$img/pause/config.json" "$img/pause/$cfg.json"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["layer.tar"]}]\n' "$cfg" "$PAUSE_IMAGE" >"$img/pause/manifest.json"
  tar -C "$img/pause" -cf "$img/pause.tar" manifest.json "$cfg.json" layer.tar
  ctr --address "$c" -n k8s.io images import "$img/pause.tar" >&2
  # The project's image (make image), unless the caller says to skip it.
  if [ -z "${COUCHESTOR_CLUSTER_NO_IMAGE:-}" ]; then
    local archive=${COUCHESTOR_IMAGE_ARCHIVE:-$ROOT/bin/couchestor-image.tar}
    if [ -z "${COUCHESTOR_IMAGE_ARCHIVE:-}" ]; then
      log "building the project's image (make image)"
      make -C "$ROOT" image >&2
    fi
    ctr --address "$c" -n k8s.io images import "$archive" >&2
  fi
  # Further archives (hack/cluster.sh csi-images).
  if [ -n "${COUCHESTOR_CLUSTER_EXTRA_IMAGES:-}" ]; then
    for archive in "$COUCHESTOR_CLUSTER_EXTRA_IMAGES"/*.tar; do
      [ -f "$archive" ] && ctr --address "$c" -n k8s.io images import "$archive" >&2
    done
  fi
}

kubelet_up() {
  local k="$RUN/kubelet"
  mkdir -p "$k" "$RUN/pod-logs" "$RUN/volume-plugins"
  echo "nameserver 127.0.0.1" >"$RUN/resolv.conf"
  cat >"$RUN/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: ${NODE_IP}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $RUN/pki/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $RUN/pki/kubelet-serving.crt
tlsPrivateKeyFile: $RUN/pki/kubelet-serving.key
containerRuntimeEndpoint: unix://$RUN/containerd/containerd.sock
# cgroup v1 host (the kubelet exits without failCgroupV1: false).
failCgroupV1: false
cgroupDriver: cgroupfs
# No CAP_SYS_RESOURCE: pods get no OOM protection.
oomScoreAdj: 0
registerNode: true
resolvConf: $RUN/resolv.conf
clusterDomain: cluster.local
# Pods resolve through the cluster DNS stand-in on the bridge.
clusterDNS: [${NODE_IP}]
# Imported images can't be pulled again: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 50Mi, nodefs.available: 1%, nodefs.inodesFree: 1%, imagefs.available: 1%}
podLogsDir: $RUN/pod-logs
volumePluginDir: $RUN/volume-plugins
failSwapOn: false
serializeImagePulls: false
maxPods: 110
EOF
  start kubelet kubelet --config "$RUN/kubelet.yaml" --kubeconfig "$RUN/kubelet.kubeconfig" \
    --root-dir "$k" --node-ip "$NODE_IP" --hostname-override "$NODE" --cert-dir "$RUN/pki/kubelet-certs"
}

kube_proxy_up() {
  cat >"$RUN/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $RUN/kube-proxy.kubeconfig}
hostnameOverride: ${NODE}
bindAddress: ${NODE_IP}
clusterCIDR: ${POD_CIDR}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["${NODE_IP}/32"]
oomScoreAdj: 0
iptables: {localhostNodePorts: false}
# 0: leave the host's conntrack sysctls alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  start kube-proxy kube-proxy --config "$RUN/kube-proxy.yaml"
}

# ---------------------------------------------------------------- down

cmd_down() {
  [ -d "$RUN" ] || { log "nothing to stop ($RUN does not exist)"; return 0; }
  local bins="$BINDIR" kc="$RUN/admin.kubeconfig" sock="$RUN/containerd/containerd.sock"
  export PATH="$bins:$PATH"
  # 1. Workloads through the API, so volumes unmount and CNI DEL runs: stop
  #    the controllers and the scheduler first so nothing is recreated.
  stop kube-scheduler
  stop kube-controller-manager
  if alive kube-apiserver && alive kubelet && [ -f "$kc" ]; then
    log "deleting every pod through the API"
    timeout 120 kubectl --kubeconfig "$kc" delete pods --all-namespaces --all --grace-period=5 --timeout=100s >/dev/null 2>&1 \
      || log "some pods did not go through the API; removing their sandboxes directly"
  fi
  # 2. kube-proxy, then its own cleanup of iptables/nft rules.
  stop kube-proxy
  [ -x "$bins/kube-proxy" ] && "$bins/kube-proxy" --cleanup >/dev/null 2>&1 || true
  # 3. kubelet, then the sandboxes it left.
  stop kubelet
  if alive containerd && [ -x "$bins/crictl" ]; then
    timeout 90 "$bins/crictl" --runtime-endpoint "unix://$sock" rmp -fa >/dev/null 2>&1 || true
  fi
  # 4. Control plane.
  stop cluster-dns
  stop kube-apiserver
  stop etcd
  # 5. containerd, then its shims and anything still in the pods' cgroups
  #    (after a crash the shims outlive containerd; their PIDs are in the
  #    bundles containerd wrote).
  stop containerd
  local f pid
  for f in "$RUN"/containerd/state/io.containerd.runtime.v2.task/*/*/shim.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f"); [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
  done
  kill_cgroup_procs
  # 6. Mounts under the run directory (netns, kubelet volumes, overlay
  #    snapshots, the kubelet's rshared bind of its root dir), deepest first.
  local m i
  for i in 1 2 3; do
    for m in $(awk -v r="$RUN" 'index($5, r) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
  done
  # 7. Network: bridge (its routes go with it), guard, the stack's chains.
  ip link del "$BRIDGE" 2>/dev/null || true
  for ch in POSTROUTING FORWARD; do
    while iptables -t mangle -D "$ch" -j "$GUARD" 2>/dev/null; do :; done
  done
  iptables -t mangle -F "$GUARD" 2>/dev/null || true
  iptables -t mangle -X "$GUARD" 2>/dev/null || true
  remove_chains
  remove_nft_tables
  # 8. sysctls back to what they were.
  if [ -f "$RUN/sysctl.saved" ]; then
    while IFS= read -r kv; do sysctl -qw "$kv" || log "could not restore $kv"; done <"$RUN/sysctl.saved"
  fi
  # 9. cgroups the kubelet created.
  remove_cgroups
  # 10. Host paths that did not exist before up.
  for p in "${HOST_PATHS[@]}"; do
    if [ -e "$p" ] && ! grep -qx "$p" "$RUN/state/host-paths-before" 2>/dev/null; then rm -rf "$p"; fi
  done
  if [ -d /run/containerd/s ] && [ -f "$RUN/state/shim-sockets-before" ]; then
    for s in /run/containerd/s/*; do
      [ -e "$s" ] || continue
      grep -qx "$(basename "$s")" "$RUN/state/shim-sockets-before" || rm -f "$s"
    done
  fi
  if [ -n "${COUCHESTOR_CLUSTER_KEEP_LOGS:-}" ]; then
    rm -rf "$COUCHESTOR_CLUSTER_KEEP_LOGS"; mkdir -p "$(dirname "$COUCHESTOR_CLUSTER_KEEP_LOGS")"
    cp -r "$RUN/logs" "$COUCHESTOR_CLUSTER_KEEP_LOGS" && log "logs kept in $COUCHESTOR_CLUSTER_KEEP_LOGS"
  fi
  rm -rf "$RUN" 2>/dev/null || { sleep 1; rm -rf "$RUN"; }
  log "cluster removed"
}

kube_cgroups() { # every kubepods directory the kubelet made, deepest first
  local c
  for c in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/kubepods.slice /sys/fs/cgroup/kubepods; do
    [ -d "$c" ] && find "$c" -depth -type d
  done
  return 0
}

kill_cgroup_procs() {
  local d pid i
  for i in 1 2 3; do
    for d in $(kube_cgroups); do
      [ -f "$d/cgroup.procs" ] || continue
      while read -r pid; do [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true; done <"$d/cgroup.procs"
    done
    sleep 0.2
  done
}

remove_cgroups() {
  local d i
  for i in 1 2 3; do
    for d in $(kube_cgroups); do rmdir "$d" 2>/dev/null || true; done
    [ -z "$(kube_cgroups)" ] && return 0
    sleep 0.5
  done
  log "cgroups left: $(kube_cgroups | tr '\n' ' ')"
}

remove_chains() { # KUBE-*/CNI-* chains that did not exist before up
  local t ch
  for t in filter nat mangle raw; do
    for ch in $(iptables -t "$t" -S 2>/dev/null | awk '$1=="-N" {print $2}' | grep -E '^(KUBE-|CNI-)' || true); do
      grep -qx ":$ch" "$RUN/state/chains-before" 2>/dev/null && continue
      # drop the references first, then the chain
      { iptables -t "$t" -S 2>/dev/null | grep -e "-j $ch\b" || true; } | sed 's/^-A/-D/' | while read -r rule; do
        eval "iptables -t $t $rule" 2>/dev/null || true
      done
      iptables -t "$t" -F "$ch" 2>/dev/null || true
    done
    for ch in $(iptables -t "$t" -S 2>/dev/null | awk '$1=="-N" {print $2}' | grep -E '^(KUBE-|CNI-)' || true); do
      grep -qx ":$ch" "$RUN/state/chains-before" 2>/dev/null && continue
      iptables -t "$t" -X "$ch" 2>/dev/null || true
    done
  done
}

remove_nft_tables() { # nft tables of the stack (kube-proxy, kubelet) that up did not find
  local line
  nft list tables 2>/dev/null | while read -r line; do
    case "$line" in *kube*) ;; *) continue ;; esac
    grep -qxF "$line" "$RUN/state/nft-before" 2>/dev/null && continue
    nft delete $line 2>/dev/null || true
  done
}

[ "${BASH_SOURCE[0]}" = "$0" ] || return 0 # sourced (for debugging): functions only
case "${1:-}" in
  bins) cmd_bins ;;
  helm) cmd_helm ;;
  up) cmd_up ;;
  down) cmd_down ;;
  guard) cmd_guard ;;
  can) cmd_can ;;
  csi-images) cmd_csi_images ;;
  csi-can) cmd_csi_can ;;
  cached) cmd_cached ;;
  *) echo "usage: $0 bins|helm|up|down|guard|can|cached|csi-images|csi-can" >&2; exit 2 ;;
esac
