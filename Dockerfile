# One static binary, used for the manager and the node agent.
FROM golang:1.26.8-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=0.0.0-dev
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/driverpilot/driverpilot/internal/version.Version=${VERSION}" \
      -o /out/driverpilot ./cmd/driverpilot

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/driverpilot /driverpilot
# The manager runs as this non-root user; the agent DaemonSet overrides it (it loads BPF programs).
USER 65532:65532
ENTRYPOINT ["/driverpilot"]
CMD ["manager"]
