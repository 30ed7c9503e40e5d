# Multi-stage build of the `strait` binary into a small runtime image.
#   docker build -t strait .
#   docker run --rm -v $PWD/configs:/etc/strait -v $PWD/certs:/certs strait edge --config /etc/strait/edge.toml
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p strait --bins \
 && strip target/release/strait

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home /var/lib/strait --create-home strait
COPY --from=build /src/target/release/strait /usr/local/bin/strait
USER strait
WORKDIR /var/lib/strait
# Tunnel (UDP), edge forwards and admin ports are set in the config file.
EXPOSE 4433/udp 9000 9901 9902
ENTRYPOINT ["/usr/local/bin/strait"]
CMD ["--help"]
