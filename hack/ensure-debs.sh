#!/usr/bin/env bash
# Installs the Debian packages the tests use to check our work with independent tools.
# Idempotent: installs only what is missing. Each line of PACKAGES says who needs it.
# `hack/ensure-debs.sh bench` also installs BENCH_PACKAGES (make bench).
set -euo pipefail
PACKAGES=(
  # boot media checks: ISO / FAT readers and builders
  xorriso genisoimage mtools dosfstools util-linux
  grub-common grub-efi-amd64-bin grub-pc-bin isolinux syslinux-common
  # partition tables of hybrid images (sgdisk, sfdisk) and Flatcar's isohybrid layout
  gdisk fdisk syslinux-utils
  # boot proof (make test-boot): QEMU, OVMF (UEFI), the kernel and busybox of the test initrd,
  # systemd-boot and systemd-stub for Talos-like UKIs, sbsigntool for a signed (Secure Boot) one
  qemu-system-x86 ovmf linux-image-amd64 busybox-static systemd-boot-efi sbsigntool binutils
  # BMC lab: Python venv for sushy-tools, openssl for certs
  python3-venv openssl
  # hack/testbin.sh: /usr/bin/time -v reports the peak memory of each Go build
  time
)
BENCH_PACKAGES=(
  # make bench: the static file server the artifact server is compared with
  nginx-light
)
if [ "${1:-}" = bench ]; then
  PACKAGES+=("${BENCH_PACKAGES[@]}")
fi
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "ensure-debs: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
