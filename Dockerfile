# syntax=docker/dockerfile:1
# The manager image: the beskar7 binary and CA certificates, nothing else, running as non-root.

FROM docker.io/library/rust:1.95-bookworm AS builder
WORKDIR /src
# Dependencies first, so source edits do not refetch crates.
COPY Cargo.toml Cargo.lock ./
COPY api/Cargo.toml api/Cargo.toml
COPY redfish/Cargo.toml redfish/Cargo.toml
COPY boot/Cargo.toml boot/Cargo.toml
COPY controllers/Cargo.toml controllers/Cargo.toml
COPY test/Cargo.toml test/Cargo.toml
RUN cargo fetch --locked
COPY . .
RUN cargo build --release --locked --bin beskar7 \
 && install -D -m 0755 target/release/beskar7 /out/beskar7

# distroless/cc: glibc, libgcc and CA certificates; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/beskar7 /beskar7
USER 65532:65532
EXPOSE 8080 8081 8082 9443
ENTRYPOINT ["/beskar7"]
CMD ["manager"]
