# The flower-server binary in a small, non-root runtime image.
#
#   docker build -t flower-server .
#   docker run --rm -p 8080:8080 -p 9091:9091 -v "$PWD/certs:/certs:ro" -v "$PWD/out:/data" \
#     flower-server --ssl-ca-certfile /certs/ca.pem --ssl-certfile /certs/server.pem \
#     --ssl-keyfile /certs/server.key --output-dir /data --metrics-address 0.0.0.0:9091
#
# Not built by this repository's CI (no Docker there); see README "Operating the server".

# Build stage: the whole workspace is needed for its lockfile and path crates.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p flower-server-cli \
 && cp target/release/flower-server /flower-server \
 && strip /flower-server

# Runtime: glibc, libgcc and CA certificates (for Vault over TLS), no shell,
# no package manager, user 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /flower-server /usr/local/bin/flower-server
WORKDIR /data
USER nonroot:nonroot
# grpc-bidi clients, the Fleet API (if --fleet-api-address), metrics/health.
EXPOSE 8080 9092 9091
ENTRYPOINT ["/usr/local/bin/flower-server"]
CMD ["--help"]
