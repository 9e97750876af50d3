# syntax=docker/dockerfile:1
#
# One small image with the pipeline's three programs and the health probe:
#   /usr/local/bin/dispatcher        (the default entrypoint)
#   /usr/local/bin/callback-ingest
#   /usr/local/bin/thingspace-sim    (development and tests only)
#   /usr/local/bin/healthcheck       (GET a URL, exit 0 on 2xx: distroless has no shell)
# Pick the program with the container's command/entrypoint, e.g.
#   docker run --entrypoint /usr/local/bin/callback-ingest thingspace-esim
#
# The binaries are static (CGO_ENABLED=0), so the final stage is distroless
# static: CA certificates and tzdata, no shell, no package manager, running as
# the image's nonroot user (65532).

FROM --platform=$BUILDPLATFORM golang:1.26 AS build
ARG TARGETOS
ARG TARGETARCH
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w" -o /out/ \
      ./cmd/dispatcher ./cmd/callback-ingest ./cmd/thingspace-sim ./deploy/healthcheck

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/dispatcher /out/callback-ingest /out/thingspace-sim /out/healthcheck /usr/local/bin/
USER 65532:65532
EXPOSE 8080 8090 9090 9091
ENTRYPOINT ["/usr/local/bin/dispatcher"]
