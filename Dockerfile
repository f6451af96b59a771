# Pyron's three binaries in one image, for the local-development compose file.
# Build: docker build -t pyron .   The image runs pyron-api by default; the compose file
# runs pyron-worker and pyron-forwarder from the same image.

FROM rust:1.88-bookworm AS build
WORKDIR /src
# Dependencies first, so code changes do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin \
 && echo 'fn main() {}' > src/bin/pyron-api.rs \
 && echo 'fn main() {}' > src/bin/pyron-worker.rs \
 && echo 'fn main() {}' > src/bin/pyron-forwarder.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --bins \
 && rm -rf src
COPY src ./src
RUN touch src/lib.rs src/bin/*.rs && cargo build --release --locked --bins

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin pyron
COPY --from=build /src/target/release/pyron-api /src/target/release/pyron-worker \
     /src/target/release/pyron-forwarder /usr/local/bin/
USER pyron
ENV PYRON_BIND=0.0.0.0:8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=2s CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/pyron-api"]
