# syntax=docker/dockerfile:1
# One image holding every binary of central-registry: `registry`, `demo-service` and
# `demo-client` (the Helm chart picks one per container with `command`).
#
# Stages: cargo-chef computes a recipe of the dependencies (planner), builds them in a
# layer that only changes when Cargo.toml/Cargo.lock change (builder), then builds the
# workspace; the final stage is distroless (glibc, no shell, no package manager) running
# as the non-root user 65532.
#
# SQLX_OFFLINE is not needed: the queries use sqlx::query() at run time, no `query!`
# macros are checked against a database at compile time (only `sqlx::migrate!`, which
# embeds the migration files).
#
# `make image-check` runs the cargo-chef recipe and the release build of these binaries
# on the host, where no Docker daemon is at hand.

# Keep in step with rust-toolchain.toml.
ARG RUST_VERSION=1.95.0
# Keep in step with CARGO_CHEF_VERSION in mk/kubernetes.mk.
ARG CARGO_CHEF_VERSION=0.1.78

# The full image, not the slim one: jemalloc, the registry's allocator, is built with
# make, which the slim image lacks. Only the build stages use it.
FROM rust:${RUST_VERSION}-trixie AS chef
ARG CARGO_CHEF_VERSION
RUN cargo install --locked cargo-chef --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bin registry --bin demo-service --bin demo-client

FROM gcr.io/distroless/cc-debian13:nonroot AS runtime
COPY --from=builder /src/target/release/registry /src/target/release/demo-service /src/target/release/demo-client /usr/local/bin/
# distroless's `nonroot` user; the chart sets the same ids in its securityContext.
USER 65532:65532
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/registry"]
CMD ["serve"]
