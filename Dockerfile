# Builds the event-trigger binary; the same image runs the job and the mock-api.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin event-trigger

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /src/target/release/event-trigger /usr/local/bin/event-trigger
COPY config ./config
COPY scripts ./scripts
ENTRYPOINT ["event-trigger"]
CMD ["run"]
