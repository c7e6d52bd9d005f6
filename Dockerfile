# syntax=docker/dockerfile:1
#
# tend's image: built from source in a Rust stage, run from a minimal runtime with
# nothing but glibc, CA certificates and a non-root user. deploy/ runs it with a
# read-only root filesystem; tend writes nothing to disk.
#
#   make image                          # docker or podman where an engine runs,
#                                       # else buildah from this machine's files
#   docker buildx build --platform linux/amd64,linux/arm64 .   # what CI publishes

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
# aws-lc (the TLS crypto) builds with cmake.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tend \
    && cp target/release/tend /usr/local/bin/tend

# distroless "cc": glibc, libgcc, CA certificates, and the user nonroot (65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /usr/local/bin/tend /tend
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/tend"]
CMD ["run"]
