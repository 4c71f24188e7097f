# The audit-gateway image: `serve` only (no simulator), as a non-root user, on a
# read-only root filesystem. Build: docker build -t audit-gateway .
#
# Stages: chef (the toolchain and cargo-chef), planner (the dependency recipe, which
# changes only when Cargo.toml/Cargo.lock do), build (dependencies cooked in their own
# cached layer, then the gateway), and the runtime image.

# The builder and the runtime share Debian 12 (bookworm), so the binary links against
# the glibc it runs with. Pin RUST_IMAGE (e.g. rust:1.88-slim-bookworm, the crate's
# rust-version, or a digest) for reproducible builds.
ARG RUST_IMAGE=rust:1-slim-bookworm
# distroless/cc-debian12 rather than debian:bookworm-slim: it holds exactly what the
# binary needs -- glibc (main.rs tunes glibc's malloc with mallopt), libgcc_s, and the CA
# bundle in /etc/ssl/certs (reqwest's rustls verifier reads the system roots) -- and no
# shell, package manager or setuid binaries. The `nonroot` tag's user is 65532.
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
# Dependencies only (the workspace's own crates replaced by dummies): this layer is
# rebuilt only when the recipe, i.e. the manifests or the lock file, changes.
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --no-default-features --bin audit-gateway \
    --recipe-path recipe.json
COPY . .
# Without the default `simulator` feature: the production binary holds neither the
# Confluence simulator nor the demo and its credential.
RUN cargo build --release --locked --no-default-features --bin audit-gateway

FROM ${RUNTIME_IMAGE}
COPY --from=build /src/target/release/audit-gateway /usr/local/bin/audit-gateway
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd. The
# gateway writes nothing to disk (logs go to stderr, secrets and caller tokens are only
# read), so the root filesystem can be mounted read-only.
USER 65532:65532
# gRPC, and Prometheus metrics once AUDIT_GATEWAY_METRICS_LISTEN=0.0.0.0:9090 is set.
EXPOSE 50051 9090
# Reachable from other hosts, so the gateway starts only with caller tokens
# (AUDIT_GATEWAY_CALLER_TOKENS_FILE), mTLS, passthrough, or
# AUDIT_GATEWAY_ALLOW_UNAUTHENTICATED=true where a mesh authenticates callers; and with
# a credential salt (AUDIT_GATEWAY_CREDENTIAL_SALT_FILE), so resume tokens and follow
# checkpoints survive a restart, or AUDIT_GATEWAY_ALLOW_EPHEMERAL_TOKENS=true.
ENV AUDIT_GATEWAY_LISTEN=0.0.0.0:50051
# Extra arguments (`docker run IMAGE --metrics-listen ...`) are flags of `serve`.
ENTRYPOINT ["/usr/local/bin/audit-gateway", "serve"]
