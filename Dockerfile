# syntax=docker/dockerfile:1
# The exact-operator image the Helm chart (charts/exact-operator) runs:
#
#   docker build -t <registry>/exact-operator:0.1.0 .
#   helm install exact-operator charts/exact-operator -n exact-operator-system --create-namespace \
#     --set image.repository=<registry>/exact-operator
#
# Static TLS (rustls), no OpenSSL: the runtime image only needs glibc and libgcc.

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the crate registry and build artifacts between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin exact-operator \
    && cp target/release/exact-operator /usr/local/bin/exact-operator

# Distroless: glibc + libgcc, no shell, no package manager; runs as nonroot (65532).
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="exact-operator" \
      org.opencontainers.image.description="Keeps Exact Online OAuth 2.0 connections alive" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /usr/local/bin/exact-operator /usr/local/bin/exact-operator
USER 65532:65532
# 8080: /metrics, /healthz, /readyz; 8081: OAuth start and callback (with --oauth-addr).
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/exact-operator"]
