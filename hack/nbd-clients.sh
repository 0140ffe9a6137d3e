#!/usr/bin/env bash
# Installs the standard NBD clients the integration tests drive
# (tests/integration/nbd): qemu-img and qemu-io (qemu-utils), nbdcopy and
# nbdinfo (libnbd-bin), nbdkit (the memory-plugin baseline of the benchmarks)
# and fio (its nbd engine); for the CSI driver's node tests (tests/integration/csi)
# nbdfuse (libnbd-bin), fusermount3 (fuse3), mkfs.xfs (xfsprogs) and losetup,
# mkfs.ext4, resize2fs, blkid. Debian/Ubuntu only; does nothing when every tool
# is already on PATH.
set -euo pipefail

tools=(qemu-img qemu-io nbdcopy nbdinfo nbdkit fio nbdfuse fusermount3 mkfs.xfs mkfs.ext4 losetup blkid resize2fs)
missing=()
for t in "${tools[@]}"; do
	command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi
echo "nbd-clients: installing (missing: ${missing[*]})" >&2
if ! command -v apt-get >/dev/null 2>&1; then
	echo "nbd-clients: apt-get not found; install qemu-utils libnbd-bin nbdkit fio fuse3 xfsprogs e2fsprogs util-linux with your package manager" >&2
	exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
	sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends qemu-utils libnbd-bin nbdkit fio fuse3 xfsprogs e2fsprogs util-linux >/dev/null
for t in "${tools[@]}"; do
	command -v "$t" >/dev/null 2>&1 || { echo "nbd-clients: $t still missing after install" >&2; exit 1; }
done
