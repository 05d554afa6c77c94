#!/usr/bin/env bash
# Installs the Rust targets the build needs besides the host's: x86_64-unknown-uefi, for the UEFI
# loader that boot/build.rs compiles and embeds (boot/efi-loader/). For the active toolchain, and
# for nightly when it is installed (hack/fuzz.sh builds the workspace with it). Idempotent; silent
# when everything is already there.
#
#   hack/ensure-rust-targets.sh
set -euo pipefail

TARGETS=(x86_64-unknown-uefi)

die() { echo "ensure-rust-targets: $*" >&2; exit 1; }

command -v rustup >/dev/null || die "rustup not found: the ${TARGETS[*]} target(s) must be installed for $(rustc -V 2>/dev/null || echo rustc) by hand"

cd "$(dirname "$0")/.." # so that a rust-toolchain file of the repository picks the active toolchain
toolchains=("$(rustup show active-toolchain | cut -d' ' -f1)")
if rustup run nightly rustc -V >/dev/null 2>&1; then
	toolchains+=(nightly)
fi

for toolchain in "${toolchains[@]}"; do
	installed=$(rustup target list --installed --toolchain "$toolchain")
	for target in "${TARGETS[@]}"; do
		if ! grep -qx "$target" <<<"$installed"; then
			echo "ensure-rust-targets: rustup target add $target --toolchain $toolchain"
			rustup target add "$target" --toolchain "$toolchain"
		fi
	done
done
