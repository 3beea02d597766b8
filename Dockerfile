# portcullis container image.
#
#   docker build -t portcullis .
#   docker run --rm -p 127.0.0.1:3128:3128 -p 127.0.0.1:9090:9090 portcullis
#
# Listen addresses: config/portcullis.toml binds 127.0.0.1, which inside a
# container is unreachable from outside it. The image therefore carries a
# copy whose `listen` and `admin_listen` bind 0.0.0.0 (same ports); nothing
# else differs. Publish the ports on 127.0.0.1 as above, or put the image
# behind a network policy: every address that reaches port 3128 can use the
# allowlist. To run your own config, mount it over
# /etc/portcullis/portcullis.toml, or mount it elsewhere and set
# PORTCULLIS_CONFIG (or pass --config); it must bind 0.0.0.0 as well.

# ---------------------------------------------------------------- builder
# The builder is pinned by version: the same Rust as CI (`cargo --version`
# in .ci/run's output), and a rebuild months later compiles with the same
# compiler. To pin the exact image too, add its digest:
#   docker buildx imagetools inspect rust:1.95.0-bookworm   # prints Digest: sha256:...
#   docker build --build-arg RUST_IMAGE=rust:1.95.0-bookworm@sha256:<digest> -t portcullis .
# (or write it into the ARG below). Moving to a newer Rust is a one-line change here.
ARG RUST_IMAGE=rust:1.95.0-bookworm
FROM ${RUST_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src

# Dependency layer: build every dependency from Cargo.toml and Cargo.lock
# alone, against stub sources, so that a change under src/, tests/ or
# benches/ does not rebuild them (cargo needs a file for every target the
# manifest declares: docker/stub-targets.sh makes one). Only a change of
# Cargo.toml, Cargo.lock or that script invalidates this layer;
# .ci/check-ops.py checks that nothing else is copied before it.
# The training programs of the profile-guided build (below) are examples: their
# dependencies are built here too, and llvm-profdata comes with rustup's llvm-tools.
COPY Cargo.toml Cargo.lock ./
COPY docker/stub-targets.sh /usr/local/bin/stub-targets
RUN set -eu; \
    rustup component add llvm-tools; \
    stub-targets > /tmp/stubs; \
    cargo build --release --locked --bin portcullis \
      --example pgo_train --example intercept_bench --example tls_bench; \
    xargs rm -f < /tmp/stubs; \
    rm -rf target/release/.fingerprint/portcullis-* target/release/deps/portcullis-* \
      target/release/deps/libportcullis-* target/release/portcullis \
      target/release/examples

# The real build, profile-guided (benches/load/pgo.sh): the proxy is built
# instrumented, trained for about a minute on loopback (plain and TLS forwarding,
# tunnels, interception, the TLS listener), then built again with the profile;
# 16-19 % fewer instructions per forwarded request (benches/load/RESULTS.md). The
# two profile builds compile the dependencies again (their flags differ), so this
# step takes about three release builds' time.
COPY . .
RUN set -eu; \
    pgo_bin=$(bash benches/load/pgo.sh); \
    cp "$pgo_bin" target/release/portcullis; \
    rm -rf target/pgo-generate target/pgo-use target/pgo-data; \
    strip --strip-debug target/release/portcullis; \
    target/release/portcullis --version

# The image's config: config/portcullis.toml with both listeners on
# 0.0.0.0. The build fails if the rewrite missed, and the result is
# validated by the binary itself.
RUN set -eu; \
    sed -E 's/^([[:space:]]*(admin_)?listen[[:space:]]*=[[:space:]]*")127\.0\.0\.1:/\10.0.0.0:/' \
      config/portcullis.toml > /tmp/portcullis.toml; \
    grep -Eq '^[[:space:]]*listen[[:space:]]*=[[:space:]]*"0\.0\.0\.0:' /tmp/portcullis.toml; \
    grep -Eq '^[[:space:]]*admin_listen[[:space:]]*=[[:space:]]*"0\.0\.0\.0:' /tmp/portcullis.toml; \
    target/release/portcullis check --config /tmp/portcullis.toml > /dev/null

# ---------------------------------------------------------------- runtime
FROM debian:bookworm-slim

# Trust roots for TLS origination. Unpinned on purpose: the image should
# pick up the distribution's current trust store when it is rebuilt.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# A fixed uid/gid, so Kubernetes runAsUser / runAsNonRoot can name it.
RUN groupadd --system --gid 10001 portcullis \
 && useradd --system --uid 10001 --gid portcullis --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin portcullis

COPY --from=builder /src/target/release/portcullis /usr/local/bin/portcullis
COPY --from=builder /tmp/portcullis.toml /etc/portcullis/portcullis.toml
ENV PORTCULLIS_CONFIG=/etc/portcullis/portcullis.toml

USER 10001:10001
# 3128: proxy listener; 9090: admin (/metrics, /healthz, /readyz, /pools).
EXPOSE 3128 9090
# SIGTERM starts the graceful drain (up to shutdown_grace, 30s by default):
# give `docker stop` a longer timeout, e.g. `docker stop -t 40`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/portcullis"]
