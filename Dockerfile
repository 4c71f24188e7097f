# Multi-stage build of audit-gateway; the runtime image runs as a non-root user.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
COPY benches benches
COPY crates crates
# Without the default `simulator` feature: the production binary holds neither the
# Confluence simulator nor the demo and its credential.
RUN cargo build --release --locked --no-default-features --bin audit-gateway

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home gateway
COPY --from=build /src/target/release/audit-gateway /usr/local/bin/audit-gateway
USER 10001
EXPOSE 50051
# Reachable from other hosts, so the gateway starts only with caller tokens
# (AUDIT_GATEWAY_CALLER_TOKENS_FILE), passthrough, or AUDIT_GATEWAY_ALLOW_UNAUTHENTICATED=true
# where a mesh authenticates callers.
ENV AUDIT_GATEWAY_LISTEN=0.0.0.0:50051
ENTRYPOINT ["audit-gateway"]
CMD ["serve"]
