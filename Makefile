# Entry points people type. See README.md.
CARGO ?= cargo
SHELL := /bin/bash

.PHONY: all build test test-unit testbin debs crds verify-crds lint fmt clippy clean

all: build

build:
	$(CARGO) build --release --bin beskar7

## debs: Debian packages the tests use (xorriso, mtools, grub, python3-venv ...)
debs:
	hack/ensure-debs.sh

## testbin: kube-apiserver, etcd, CAPI managers and clusterctl built from Go modules (cached outside the repo)
testbin:
	hack/testbin.sh

## test: everything, on a fresh machine: installs what it needs, then runs all tests
test: debs testbin
	$(CARGO) test --workspace --locked

## test-unit: tests that need no control plane, BMC lab or Debian tools
test-unit:
	$(CARGO) test --workspace --locked --lib

crds:
	$(CARGO) run --quiet --bin beskar7 -- crds --out-dir config/crd/bases

lint: fmt clippy

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

clean:
	$(CARGO) clean
