#!/usr/bin/env bash
# Builds the fuzz targets of fuzz/ (cargo fuzz, nightly) and runs each briefly.
# Fails on a crash (the reproducer stays in fuzz/artifacts/<target>/); prints per-target exec counts
# as `BENCH fuzz_<target>_execs <n> execs`.
#
#   hack/fuzz.sh                 # every target, FUZZ_TIME seconds each (default 30)
#   FUZZ_TIME=600 hack/fuzz.sh iso_reader
#
# cargo-fuzz is installed from crates.io once, cached by version outside the repo
# (~/.cache/beskar7/tools/cargo-fuzz-<version>). Seed corpora are made fresh each run: every JSON
# file of shared/redfish-mockups, ISOs built with xorriso (GRUB and ISOLINUX layouts), configs.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CARGO_FUZZ_VERSION=0.13.1
TOOLS=${BESKAR7_TOOLS:-$HOME/.cache/beskar7/tools}
FUZZ_TIME=${FUZZ_TIME:-30}
TOOLCHAIN=${FUZZ_TOOLCHAIN:-nightly}
MOCKUPS=${REDFISH_MOCKUPS:-$ROOT/../shared/redfish-mockups}
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(redfish_models iso_reader boot_config os_render)

die() { echo "fuzz: $*" >&2; exit 1; }

rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1 ||
	die "the $TOOLCHAIN toolchain is missing (rustup toolchain install $TOOLCHAIN --profile minimal)"
# The boot crate builds the UEFI loader for x86_64-unknown-uefi with this toolchain too.
"$ROOT/hack/ensure-rust-targets.sh"

dir=$TOOLS/cargo-fuzz-$CARGO_FUZZ_VERSION
if [ ! -x "$dir/bin/cargo-fuzz" ]; then
	mkdir -p "$TOOLS"
	(
		flock 9
		if [ ! -x "$dir/bin/cargo-fuzz" ]; then
			echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION into $dir"
			CARGO_TARGET_DIR=$(mktemp -d) cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" \
				--locked --root "$dir"
		fi
	) 9>"$dir.lock"
fi
export PATH=$dir/bin:$PATH

cd "$ROOT/fuzz"
# Same dependency versions as the workspace where they overlap.
[ -f Cargo.lock ] || cp "$ROOT/Cargo.lock" Cargo.lock

# Debug assertions (overflow checks) on; no sanitizer: the code under test is
# safe Rust, and a panic is what libFuzzer reports as a crash.
# The build is kept outside the repo (like the Go test binaries), so a fresh clone on the same
# machine does not rebuild the HTTP/TLS stack under nightly; cargo tracks what changed.
FUZZ_TARGET_DIR=${BESKAR7_FUZZ_TARGET_DIR:-$HOME/.cache/beskar7/fuzz-target}
# --dev: unoptimised, so a cold build (the whole HTTP/TLS stack under nightly) takes minutes
# less; the suite fuzzes briefly, `FUZZ_PROFILE=--release` for long runs.
FLAGS=(--sanitizer none --debug-assertions "${FUZZ_PROFILE:---dev}" --target-dir "$FUZZ_TARGET_DIR")
mkdir -p target
cargo "+$TOOLCHAIN" fuzz build "${FLAGS[@]}" >target/fuzz-build.log 2>&1 ||
	{ tail -n 40 target/fuzz-build.log >&2; die "build failed (fuzz/target/fuzz-build.log)"; }

seed() {
	local target=$1 out=$ROOT/fuzz/corpus/$1
	mkdir -p "$out"
	case $target in
	redfish_models)
		[ -d "$MOCKUPS" ] || die "no Redfish mockups at $MOCKUPS (REDFISH_MOCKUPS=...)"
		find "$MOCKUPS" -name '*.json' -size -64k -print0 |
			while IFS= read -r -d '' f; do
				cp "$f" "$out/$(sha1sum "$f" | cut -c1-16)"
			done
		printf '{"error":{"code":"Base.1.0.GeneralError","message":"x","@Message.ExtendedInfo":[{"MessageId":"iLO.2.15.UnableToModifyDuringSystemPOST","Message":"busy"}]}}' >"$out/error-body"
		printf 'redfish+https://bmc.example:8443/redfish/v1' >"$out/address"
		;;
	iso_reader)
		command -v xorriso >/dev/null || die "xorriso missing (make debs)"
		local tmp
		tmp=$(mktemp -d)
		mkdir -p "$tmp/grub/boot/grub" "$tmp/isolinux/isolinux"
		printf 'set timeout=1\nmenuentry "Test OS" {\n  linux /boot/vmlinuz console=ttyS0\n  initrd /boot/initrd\n}\n' \
			>"$tmp/grub/boot/grub/grub.cfg"
		printf 'default linux\nlabel linux\n  kernel /boot/vmlinuz\n  append initrd=/boot/initrd quiet\n' \
			>"$tmp/isolinux/isolinux/isolinux.cfg"
		for layout in grub isolinux; do
			printf 'kernel' >"$tmp/$layout/vmlinuz"
			xorriso -as mkisofs -quiet -R -J -V TESTOS -o "$out/$layout.iso" "$tmp/$layout" 2>"$tmp/xorriso.log" ||
				{ cat "$tmp/xorriso.log" >&2; die "xorriso failed"; }
		done
		rm -rf "$tmp"
		;;
	boot_config)
		printf 'beskar7.provider_id=x ds=nocloud\nset timeout=1\nmenuentry "x" {\n  linux /vmlinuz quiet\n  linuxefi /vmlinuz\n}\n' >"$out/grub"
		printf "a='b c' d\\\\\"e\nlabel l\n  APPEND initrd=/i quiet\n  kernel /k\n" >"$out/isolinux"
		;;
	os_render)
		printf '#cloud-config\nruncmd:\n  - echo hi\nusers:\n  - name: k\n' >"$out/cloud-config"
		printf '## template: jinja\n#cloud-config\nhostname: {{ ds.meta_data.local_hostname }}\n' >"$out/jinja"
		printf '{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"/etc/x","contents":{"source":"data:,x"}}]}}' >"$out/ignition"
		printf 'version: v1alpha1\nmachine:\n  type: controlplane\n  token: x\ncluster:\n  id: y\n' >"$out/talos"
		;;
	esac
}

failed=()
for t in "${TARGETS[@]}"; do
	seed "$t"
	max_len=65536
	[ "$t" = iso_reader ] && max_len=1048576
	log=$ROOT/fuzz/target/fuzz-$t.log
	echo "fuzz: $t for ${FUZZ_TIME}s"
	if cargo "+$TOOLCHAIN" fuzz run "${FLAGS[@]}" "$t" -- \
		-max_total_time="$FUZZ_TIME" -max_len="$max_len" -rss_limit_mb=1024 -timeout=10 \
		-print_final_stats=1 >"$log" 2>&1; then
		execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
		echo "BENCH fuzz_${t}_execs ${execs:-0} execs"
	else
		tail -n 40 "$log" >&2
		failed+=("$t")
		echo "fuzz: $t FAILED (log: $log; reproducer in fuzz/artifacts/$t/)" >&2
	fi
done
[ ${#failed[@]} -eq 0 ] || die "crashes in: ${failed[*]}"
echo "fuzz: ${#TARGETS[@]} passed, 0 failed"
