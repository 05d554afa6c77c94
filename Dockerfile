# syntax=docker/dockerfile:1
# The manager image: the beskar7 binary and CA certificates, nothing else, running as non-root.
#   docker build -t ghcr.io/beskar7/beskar7:dev .        (make docker-build)

# Builder: the same Debian release as the runtime, so the binary's glibc matches.
FROM docker.io/library/rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# The UEFI loader the provider adds to Flatcar ISOs (boot/efi-loader) is built for this target.
RUN rustup target add x86_64-unknown-uefi
# Cache mounts keep the crate registry and the target dir between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin beskar7 \
 && install -D -m 0755 target/release/beskar7 /out/beskar7

# distroless/cc: glibc, libgcc and CA certificates; no shell, no package manager. The Rust TLS
# stack (rustls) reads the CA certificates from /etc/ssl/certs.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/beskar7 /beskar7
USER 65532:65532
EXPOSE 8080 8081 8082 9443
ENTRYPOINT ["/beskar7"]
CMD ["manager"]
