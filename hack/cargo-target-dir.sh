#!/usr/bin/env bash
# Prints the Cargo target directory that `make` builds into: outside the clone, so a fresh clone on
# the same machine (CI) reuses the compiled dependencies instead of building ~400 crates again.
#
#   ${BESKAR7_CARGO_CACHE:-~/.cache/beskar7/cargo-target}/<toolchain>-<lockfile>
#
# The key is the rustc version (with its commit hash) and the hash of the registry packages in
# Cargo.lock (name, version, checksum: not the workspace's own crates, whose edges change often), so
# a toolchain or dependency change starts a new directory; within one key Cargo's own fingerprints
# (source mtimes and hashes, flags, features) decide what is rebuilt, as they do in ./target. A result can only
# come from a stale cache if Cargo's fingerprints are wrong, which is equally true of ./target.
# One way they are: Cargo names the workspace's own crates by their path inside the workspace and
# judges them fresh by source mtimes, so two checkouts building into one directory share those
# artifacts, and a build in checkout B after A's files last changed makes A's look fresh
# (seen: a release build of an older worktree, then one of main, linked main against the old
# crate). A fresh clone's files are newer than any earlier build, so CI is safe as long as no
# other checkout builds while it runs; after another checkout built (a CI clone too), `touch`
# the sources of this one before building it.
# The two most recently used keys are kept; older ones are removed (each is several GiB).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE=${BESKAR7_CARGO_CACHE:-$HOME/.cache/beskar7/cargo-target}
rustc_id=$(rustc -vV | sed -n 's/^commit-hash: //p' | cut -c1-12)
[ -n "$rustc_id" ] || rustc_id=$(rustc -V | tr -c 'A-Za-z0-9.\n' '_')
lock_id=$(awk '/^\[\[package\]\]/ { if (src) print entry; entry = ""; src = 0; next }
	/^(name|version|checksum) =/ { entry = entry $0 " " }
	/^source = "registry/ { src = 1 }
	END { if (src) print entry }' "$ROOT/Cargo.lock" | sha256sum | cut -c1-12)
dir=$BASE/rustc-$rustc_id-lock-$lock_id
mkdir -p "$dir"
touch "$dir" # most recently used
# Prune: keep this key and the newest other one.
ls -1dt "$BASE"/rustc-* 2>/dev/null | tail -n +3 | while read -r old; do
	[ "$old" = "$dir" ] || rm -rf -- "$old"
done
echo "$dir"
