# One image with every jst2kd binary: producer, transformer, loader and the jst2kd CLI
# (demo, simulators, dlq, backfill, preview, check).
#
#   docker build -t jst2kd .
#   docker run --rm jst2kd jst2kd demo

# Base images pinned to exact versions, so a rebuild gets the same toolchain and system;
# pin them by digest (`@sha256:…`) in your own registry for byte-for-byte rebuilds.
FROM rust:1.95.0-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins \
 && mkdir /out \
 && cp target/release/producer target/release/transformer target/release/loader target/release/jst2kd /out/

FROM debian:12.12-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/jst2kd --create-home jst2kd
COPY --from=build /out/ /usr/local/bin/
COPY config/example.toml /etc/jst2kd/example.toml
USER 10001
WORKDIR /var/lib/jst2kd
# Metrics and health: producer 9791, transformer 9792, loader 9793.
EXPOSE 9791 9792 9793
CMD ["jst2kd", "--help"]
