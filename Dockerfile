# Herald: one image, one binary; the subcommand picks the service
# (`docker run herald api|packer|sender|migrate|all`).
#
# Plain Dockerfile on purpose: it builds with BuildKit and with the legacy builder.

FROM rust:1-bookworm AS builder
WORKDIR /src
# Queries are checked against no live database at build time.
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never
COPY . .
RUN cargo build --release -p herald --locked \
 && install -D -m 0755 target/release/herald /out/herald

FROM debian:bookworm-slim AS runtime
# curl is for container health checks (GET /readyz).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 herald \
 && useradd --system --uid 10001 --gid herald --home-dir /nonexistent --shell /usr/sbin/nologin herald
COPY --from=builder /out/herald /usr/local/bin/herald
# Migrations and schemas are compiled into the binary; shipped for reference only.
COPY migrations /usr/share/herald/migrations
COPY schemas /usr/share/herald/schemas
ENV HERALD_LISTEN=0.0.0.0:8080
USER herald:herald
EXPOSE 8080
ENTRYPOINT ["herald"]
CMD ["all"]
