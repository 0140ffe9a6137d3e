#!/usr/bin/env bash
# The CSI node plugin's image (`make csi-node-image`), without a Docker
# engine: the static couchestor binary plus the programs the node path runs
# (pkg/csi: nbdfuse and fusermount3 for the FUSE attach, nbd-client for the
# kernel one, losetup, blkid, mount/umount, mkfs.ext4/mkfs.xfs, fsck,
# resize2fs/xfs_growfs, blockdev), taken from Debian packages: `apt-get
# download` of the tools' packages and of every library package they depend
# on (Depends/Pre-Depends, followed through lib* packages only: no
# maintainer scripts, perl, python or debconf), unpacked with `dpkg-deb -x`
# into one tree, packed by hack/image as an OCI image archive.
#
#   hack/csi-node-image.sh OUT.tar [REF]   write the archive, print "OUT REF DIGEST"
#
# The .debs are cached by package=version under $COUCHESTOR_CACHE/csi-node/;
# the image is for the host's Debian release and architecture.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${COUCHESTOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/couchestor}
OUT=$(realpath -m "${1:?usage: $0 OUT.tar [REF]}")
REF=${2:-ghcr.io/billyronks/couchestor-csi-node:$(sed -n 's/^image:.*:\(v[^ ]*\)$/\1/p' "$ROOT/hack/bundlegen/release.yaml")}
# What pkg/csi execs, by package.
TOOLS=(libnbd-bin fuse3 nbd-client util-linux mount e2fsprogs xfsprogs)

log() { printf '[csi-node-image] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null && command -v apt-cache >/dev/null \
  || die "needs a Debian system (apt-get, apt-cache, dpkg-deb) to take the node tools from Debian packages"

# Library closure: Depends/Pre-Depends of the tools, then of each lib*
# package reached (alternatives that are libraries too); one apt-cache call
# per level.
closure() {
  local -A seen=()
  local level=("${TOOLS[@]}") next p d
  while [ ${#level[@]} -gt 0 ]; do
    for p in "${level[@]}"; do seen[$p]=1; echo "$p"; done
    next=()
    while read -r d; do
      case "$d" in lib*|gcc-*-base|zlib1g) [ -z "${seen[$d]:-}" ] && { seen[$d]=1; next+=("$d"); } ;; esac
    done < <(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces --no-enhances "${level[@]}" 2>/dev/null \
      | awk '$1 ~ /^\|?(Pre)?Depends:$/ {print $2}' | grep -v '^<' | sort -u || true)
    for p in "${next[@]}"; do unset "seen[$p]"; done
    level=("${next[@]}")
  done
}

mapfile -t PKGS < <(closure | sort -u)
# package=candidate version, one apt-cache call.
mapfile -t PINS < <(apt-cache policy "${PKGS[@]}" | awk '/^[^ ].*:$/ {p=substr($1, 1, length($1)-1)} /^ +Candidate:/ {print p "=" $2}')
[ ${#PINS[@]} -eq ${#PKGS[@]} ] || die "apt-cache policy gave ${#PINS[@]} candidates for ${#PKGS[@]} packages (apt-get update?)"
for p in "${PINS[@]}"; do [ "${p#*=}" != "(none)" ] || die "no candidate for Debian package ${p%%=*} (apt-get update?)"; done
KEY=$(printf '%s\n' "${PINS[@]}" | sha256sum | cut -c1-16)
DEBS="$CACHE/csi-node/debs-$KEY"
if [ ! -f "$DEBS/.complete" ]; then
  log "downloading ${#PINS[@]} Debian packages (first time only): ${PINS[*]}"
  mkdir -p "$DEBS"
  (cd "$DEBS" && apt-get -o APT::Sandbox::User=root download "${PINS[@]}" >&2) \
    || { apt-get update >&2 && (cd "$DEBS" && apt-get -o APT::Sandbox::User=root download "${PINS[@]}" >&2); }
  printf '%s\n' "${PINS[@]}" >"$DEBS/.complete"
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
FS="$WORK/rootfs"
mkdir -p "$FS"
for deb in "$DEBS"/*.deb; do dpkg-deb -x "$deb" "$FS"; done
rm -rf "$FS"/usr/share/{doc,man,info,locale,lintian,bug} "$FS"/etc/{init.d,cron.*,logrotate.d}
# What mount(8), losetup and the kubelet's paths expect to exist.
mkdir -p "$FS"/{tmp,run/mount,proc,sys,dev,csi,root,var/lib/couchestor-csi}
chmod 1777 "$FS/tmp"
ln -sfn /proc/self/mounts "$FS/etc/mtab"
printf 'root:x:0:0:root:/root:/sbin/nologin\n' >"$FS/etc/passwd"
printf 'root:x:0:\n' >"$FS/etc/group"
[ -f /etc/ssl/certs/ca-certificates.crt ] && install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$FS/etc/ssl/certs/ca-certificates.crt"
printf '%s\n' "${PINS[@]}" >"$FS/etc/couchestor-csi-node.packages"
(cd "$ROOT" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -buildid=" -o "$FS/couchestor" .)
# Every program the node path calls is there and the dynamic loader of the
# tree finds all its libraries in the tree.
for t in nbdfuse fusermount3 nbd-client losetup blkid mount umount mkfs.ext4 mkfs.xfs fsck e2fsck resize2fs xfs_growfs blockdev; do
  f=$(for d in usr/sbin usr/bin sbin bin; do [ -e "$FS/$d/$t" ] && { echo "/$d/$t"; break; }; done)
  [ -n "$f" ] || die "$t is in none of the packages ${TOOLS[*]}"
  if [ "$(id -u)" = 0 ] && command -v chroot >/dev/null && [ -x "$FS/lib64/ld-linux-x86-64.so.2" ] && head -c4 "$FS$f" | grep -q ELF; then
    libs=$(chroot "$FS" /lib64/ld-linux-x86-64.so.2 --list "$f" 2>&1) || die "$f: $libs"
    if grep -q 'not found' <<<"$libs"; then die "$f: libraries missing from the image tree: $(grep 'not found' <<<"$libs" | tr '\n' ' ')"; fi
  fi
done
cd "$ROOT/hack/image" && go run . --rootfs "$FS" --entrypoint /couchestor --tag "$REF" --title couchestor-csi-node --out "$OUT"
