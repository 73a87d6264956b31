# syntax=docker/dockerfile:1
#
# The collector: a static-enough Rust binary on a small runtime base, as a non-root user, with
# nothing to write outside /data (run it with a read-only root filesystem and a volume there).
#
# Built by `make image-collector` from the repository root (.dockerignore keeps target/, .venv
# and data/ out of the context):
#   docker build -f deploy/images/collector.Dockerfile -t REGISTRY/inference-gate/collector:0.1.0 .

# The workspace's rust-version; the lock file pins every crate.
FROM rust:1.85-slim-bookworm AS build
WORKDIR /src
COPY . .
# The caches keep the crate downloads and the build between image builds; the binary is copied
# out of the cache in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p collector \
    && install -D -m 0555 target/release/collector /out/collector \
    && mkdir -p /out/data

# glibc and libgcc, CA certificates, no shell; user `nonroot` (65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/collector /usr/local/bin/collector
# The database directory, owned by the runtime user so that a fresh volume mounted here is
# writable; everything else stays read-only.
COPY --from=build --chown=65532:65532 /out/data /data
USER 65532:65532
VOLUME ["/data"]
EXPOSE 9000
# The tokens come from the environment (COLLECTOR_ADMIN_TOKEN, COLLECTOR_INGEST_TOKEN), and so
# does the database: a file under /data by default, or a postgres:// URL
# (`-e COLLECTOR_DATABASE=postgres://...`; a URL with a password stays off the command line).
ENV COLLECTOR_DATABASE=/data/collector.db
ENTRYPOINT ["/usr/local/bin/collector"]
CMD ["serve", "--listen", "0.0.0.0:9000"]
