#!/usr/bin/env bash
# Installs the standard NBD clients the integration tests drive
# (tests/integration/nbd): qemu-img and qemu-io (qemu-utils), nbdcopy and
# nbdinfo (libnbd-bin), nbdkit (the memory-plugin baseline of the benchmarks)
# and fio (its nbd engine). Debian/Ubuntu only; does nothing when every tool is
# already on PATH.
set -euo pipefail

tools=(qemu-img qemu-io nbdcopy nbdinfo nbdkit fio)
missing=()
for t in "${tools[@]}"; do
	command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi
echo "nbd-clients: installing (missing: ${missing[*]})" >&2
if ! command -v apt-get >/dev/null 2>&1; then
	echo "nbd-clients: apt-get not found; install qemu-utils libnbd-bin nbdkit fio with your package manager" >&2
	exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
	sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends qemu-utils libnbd-bin nbdkit fio >/dev/null
for t in "${tools[@]}"; do
	command -v "$t" >/dev/null 2>&1 || { echo "nbd-clients: $t still missing after install" >&2; exit 1; }
done
