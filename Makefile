# Entry points people type. See README.md.
CARGO ?= cargo
SHELL := /bin/bash
# Cargo builds into a cache outside the clone, keyed by toolchain and Cargo.lock
# (hack/cargo-target-dir.sh), so a fresh clone reuses the compiled dependencies.
# `make CARGO_TARGET_DIR=target ...` builds in the clone as plain cargo does.
ifndef CARGO_TARGET_DIR
CARGO_TARGET_DIR := $(shell hack/cargo-target-dir.sh)
endif
export CARGO_TARGET_DIR

.PHONY: all build test test-boot test-unit testbin debs crds verify-crds lint fmt clippy clean demo fuzz bench

all: build

## rust-targets: Rust targets besides the host's (x86_64-unknown-uefi: the UEFI loader boot/efi-loader)
rust-targets:
	hack/ensure-rust-targets.sh

build: rust-targets
	$(CARGO) build --release --bin beskar7
	@echo "built $(CARGO_TARGET_DIR)/release/beskar7"

## debs: Debian packages the tests use (xorriso, mtools, grub, python3-venv ...)
debs:
	hack/ensure-debs.sh

## testbin: kube-apiserver, etcd, CAPI managers and clusterctl built from Go modules (cached outside the repo)
testbin:
	hack/testbin.sh

## test: everything, on a fresh machine: installs what it needs, then runs all tests
test: debs rust-targets testbin fuzz
	$(CARGO) test --workspace --locked

## fuzz: the fuzz targets of fuzz/ (cargo fuzz, nightly), FUZZ_TIME seconds each (default 30)
fuzz: debs
	hack/fuzz.sh

## test-boot: the boot proof: media the provider inserts are booted in QEMU (OVMF / SeaBIOS)
test-boot: debs rust-targets testbin
	$(CARGO) test -p beskar7-controllers --test boot_proof

## test-unit: tests that need no control plane, BMC lab or Debian tools
test-unit: rust-targets
	$(CARGO) test --workspace --locked --lib

## demo: local control plane + CAPI + emulated BMCs + the manager provisioning a sample cluster.
## `make demo ARGS=--once` exits when every machine is provisioned (non-zero with the reason otherwise).
demo: debs rust-targets testbin
	$(CARGO) build --bin beskar7 --bin beskar7-demo
	$(CARGO_TARGET_DIR)/debug/beskar7-demo --binary $(CARGO_TARGET_DIR)/debug/beskar7 $(ARGS)

## bench: the figures of DESIGN.md section 8, one `BENCH <name> <value> <unit>` line each, repeated
## as a summary at the end (full output in target/bench.log). Benches of the boot crate and of
## the controllers crate (every bench target, release profile); a failing bench does not stop the others.
bench: rust-targets testbin
	hack/ensure-debs.sh bench
	$(CARGO) build --release --bin beskar7
	@mkdir -p target; set -o pipefail; \
	{ status=0; \
	  $(CARGO) bench -p beskar7-boot --bench patched_read || status=1; \
	  $(CARGO) bench -p beskar7-controllers --no-fail-fast --bench '*' || status=1; \
	  exit $$status; } 2>&1 | tee target/bench.log; status=$$?; \
	echo "== BENCH summary ($$(date -u +%F), $$(nproc) cores)"; grep '^BENCH ' target/bench.log; exit $$status

crds: rust-targets
	$(CARGO) run --quiet --bin beskar7 -- crds --out-dir config/crd/bases

lint: fmt clippy

fmt:
	$(CARGO) fmt --all -- --check

clippy: rust-targets
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

clean:
	$(CARGO) clean

.PHONY: release verify-release docker-build

VERSION ?= v0.1.0
IMAGE ?= ghcr.io/beskar7/beskar7

## release: out/infrastructure-beskar7/$(VERSION)/ (infrastructure-components.yaml, metadata.yaml,
## cluster templates, ClusterClass), usable by clusterctl as a local repository
release:
	OUT_DIR=$(CURDIR)/out IMAGE=$(IMAGE) hack/release.sh $(VERSION)

## verify-release: the release against the local control plane: clusterctl generate provider and
## cluster (every flavour) offline, server-side dry-run, the manager under exactly its RBAC
verify-release: testbin
	$(CARGO) test -p beskar7-controllers --locked --test release --test webhooks

## docker-build: the manager image (needs a Docker engine)
docker-build:
	docker build -t $(IMAGE):$(VERSION) .
