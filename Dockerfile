# syntax=docker/dockerfile:1
#
# Images of netsyncd and of netsync-sim, from one Dockerfile with two final stages:
#
#   docker build --target netsyncd    -t netsync/netsyncd:dev .     (also the default: the last stage)
#   docker build --target netsync-sim -t netsync/netsync-sim:dev .
#
# Two targets rather than a build argument choosing the binary: both binaries come out of one
# `cargo build` (they share netsync-proto and netsync-core, which then compile once), BuildKit
# caches that stage for both targets, and each image holds only its own binary and settings.
# docs/DEPLOY.md has the whole story (compose, Kubernetes).

# The build image follows `rust-version` in Cargo.toml; the runtime is the same Debian release
# (bookworm), so the binaries find the glibc they were linked against.
ARG RUST_IMAGE=rust:1.94-slim-bookworm
# distroless "cc": glibc, libgcc and CA certificates, no shell, no package manager; the
# `nonroot` tag runs as uid/gid 65532.
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Only what the build reads, so that editing docs or deploy files does not rebuild. The server
# embeds migrations/ at compile time (sqlx::migrate!) and build.rs compiles proto/ (protox: no
# protoc needed). The C parts (SQLite bundled by sqlx, mimalloc, ring) build with the image's gcc.
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY proto ./proto
COPY migrations ./migrations
COPY crates ./crates
# The registry and target caches survive between builds on the same builder; the binaries are
# copied out in the same step because a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p netsync-server -p netsync-sim \
    && mkdir -p /out/data \
    && cp target/release/netsyncd target/release/netsync-sim /out/

# The device simulator, for demos and tests (docker-compose.yml runs two).
FROM ${RUNTIME_IMAGE} AS netsync-sim
COPY --from=build /out/netsync-sim /usr/local/bin/netsync-sim
USER 65532:65532
# gNMI, SimControl, health and reflection share this port.
EXPOSE 57400
ENTRYPOINT ["/usr/local/bin/netsync-sim"]
# The simulator's own default is 127.0.0.1, unreachable from outside the container.
CMD ["--listen", "0.0.0.0:57400"]

# netsyncd. Last stage, so a plain `docker build .` gives this image.
FROM ${RUNTIME_IMAGE} AS netsyncd
COPY --from=build /out/netsyncd /usr/local/bin/netsyncd
# The database directory. distroless has no shell to mkdir/chown in, so an empty directory is
# copied with the right owner; Docker copies that owner onto a new named volume mounted here.
COPY --from=build --chown=65532:65532 /out/data /var/lib/netsync
USER 65532:65532
# The allocator keeps freed memory rather than handing it back to the kernel: under churn each
# commit would otherwise fault in and zero fresh pages again (docs/BENCHMARKS.md, churn).
ENV MIMALLOC_PURGE_DELAY=-1
VOLUME ["/var/lib/netsync"]
# 50051: the gRPC API (health and reflection included). 9090: metrics, when netsyncd is started
# with --metrics-listen. 8081: plaintext health only, when started with --health-listen (for
# probes while the API requires TLS). docker-compose.yml and the Kubernetes manifests do both.
EXPOSE 50051 8081 9090
# The image has no shell: netsyncd asks itself (grpc.health.v1 Check, plaintext), by default on
# 127.0.0.1:50051 as the default flags below serve; NETSYNC_HEALTH_ADDR points it at the health
# listener when the API speaks TLS.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["/usr/local/bin/netsyncd", "health"]
ENTRYPOINT ["/usr/local/bin/netsyncd"]
# Defaults as flags, not as NETSYNC_* environment variables: an environment variable would beat a
# --config file (flag > environment > file), while CMD is replaced as a whole by `docker run IMAGE
# ARGS...`, compose `command:` and Kubernetes `args:`, so a config file then decides.
CMD ["--listen", "0.0.0.0:50051", "--db", "sqlite:///var/lib/netsync/netsync.db"]
