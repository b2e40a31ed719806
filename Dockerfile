# One static binary, used for the manager and the node agent. `make image` builds the same image
# (entrypoint, command, user, labels; a linux/amd64 + linux/arm64 index) without a container engine;
# this file is for machines that have one:
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) -t ghcr.io/driverpilot/driverpilot:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 ...   (the same, as a multi-architecture index)
# The BPF objects are committed (bpf2go output), so the build needs no clang; CGO is off, so the
# binary runs on a base without a C library.
FROM --platform=$BUILDPLATFORM golang:1.26.8-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG TARGETOS=linux TARGETARCH=amd64 VERSION=0.0.0-dev
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath \
      -ldflags "-s -w -X github.com/driverpilot/driverpilot/internal/version.Version=${VERSION}" \
      -o /out/driverpilot ./cmd/driverpilot

# distroless static: passwd/group with nonroot (65532), /tmp, CA certificates, no shell.
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=0.0.0-dev REVISION=unknown
LABEL org.opencontainers.image.title=driverpilot \
      org.opencontainers.image.description="DriverPilot: per-node runtime-security driver selection, proven by a self-test (manager and node agent)" \
      org.opencontainers.image.version=$VERSION \
      org.opencontainers.image.revision=$REVISION \
      org.opencontainers.image.source=https://github.com/driverpilot/driverpilot
COPY --from=build /out/driverpilot /driverpilot
# The manager runs as this non-root user; the agent DaemonSet overrides it (it loads BPF programs).
USER 65532:65532
ENTRYPOINT ["/driverpilot"]
CMD ["manager"]
