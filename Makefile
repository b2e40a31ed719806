# DriverPilot build, generation and tests. Tools are pinned and cached outside the clone.
SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

CACHE ?= $(or $(DRIVERPILOT_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/driverpilot)
TOOLS := $(CACHE)/tools
CONTROLLER_TOOLS_VERSION ?= v0.23.0
CONTROLLER_GEN := $(TOOLS)/controller-gen-$(CONTROLLER_TOOLS_VERSION)
VERSION ?= 0.1.0
LDFLAGS := -s -w -X github.com/driverpilot/driverpilot/internal/version.Version=$(VERSION)

.PHONY: all build build-arm64 generate manifests verify-generated test vet fmt run run-processes print-version tools kernel-matrix bench-sensor bench-rollout image bundle fault

all: build

build: ## Build bin/driverpilot (static, CGO disabled).
	CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)' -o bin/driverpilot ./cmd/driverpilot

build-arm64: ## Cross-build bin/driverpilot-linux-arm64 (static; the bpfel objects serve arm64 too).
	CGO_ENABLED=0 GOOS=linux GOARCH=arm64 go build -trimpath -ldflags '$(LDFLAGS)' -o bin/driverpilot-linux-arm64 ./cmd/driverpilot

$(CONTROLLER_GEN):
	@mkdir -p $(TOOLS)
	@echo "installing controller-gen $(CONTROLLER_TOOLS_VERSION) into $(TOOLS)"
	GOBIN=$(TOOLS)/tmp-cg go install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_TOOLS_VERSION)
	mv $(TOOLS)/tmp-cg/controller-gen $@ && rmdir $(TOOLS)/tmp-cg

tools: $(CONTROLLER_GEN)

generate: $(CONTROLLER_GEN) ## Deepcopy methods, then the generated BPF objects.
	$(CONTROLLER_GEN) object:headerFile=hack/boilerplate.go.txt paths=./api/...
	@if [ -d bpf ] && grep -qs go:generate bpf/*.go; then go generate ./bpf/...; fi

manifests: $(CONTROLLER_GEN) ## CRDs and the manager's RBAC from the markers in the code.
	$(CONTROLLER_GEN) crd paths=./api/... output:crd:artifacts:config=config/crd/bases
	$(CONTROLLER_GEN) rbac:roleName=driverpilot-manager paths=./controllers/... paths=./internal/... output:rbac:artifacts:config=config/rbac

verify-generated: generate manifests ## Fails when committed generated files are stale.
	@if [ -n "$$(git status --porcelain -- api config bpf)" ]; then \
	  echo "generated files are stale; run 'make generate manifests' and commit:"; \
	  git status --porcelain -- api config bpf; git diff --stat -- api config bpf; exit 1; fi

vet:
	go vet ./...

fmt:
	@out="$$(gofmt -l $$(git ls-files '*.go'))"; if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

test: ## The whole suite: generated code, vet, unit, envtest and root kernel tests.
	hack/test.sh

fault: ## The fault suite alone (test/fault, also part of `make test`): faults injected during a 60-node rollout, invariants watched throughout.
	KUBEBUILDER_ASSETS="$$(hack/envtest-assets.sh | tail -1)" go test -count=1 -v -timeout 15m ./test/fault/

run: ## The product's main job: a real single-node cluster here, the operator installed as the README says, the sample profile.
	hack/cluster.sh run

run-processes: ## The loop without a cluster: embedded control plane, manager and agent as processes.
	hack/run-local.sh

print-version:
	@echo $(VERSION)

kernel-matrix: ## Debian 5.10, 6.1, 6.12 (amd64, cloud-amd64) and 6.12 arm64 under qemu (TCG), plus the host kernel: probe, decision, self-test per driver, injected faults.
	hack/kernel-matrix.sh

bench-sensor: ## In-kernel cost per exec and exec throughput with and without the sensor.
	hack/bench-sensor.sh

bench-rollout: ## Growth table (1000, 5000, 20000 nodes; 5000 in 10 profiles): converge time, manager writes and RSS per node, rollout vs raw API write rate, steady-state bytes per node.
	hack/bench-rollout.sh

IMG ?= ghcr.io/driverpilot/driverpilot:$(VERSION)
DIST ?= dist

image: build build-arm64 ## The container image without a container engine: $(DIST)/oci (OCI layout, multi-architecture index linux/amd64 + linux/arm64) and $(DIST)/driverpilot-$(VERSION).tar, -arm64.tar (docker load).
	go run ./hack/image --binary bin/driverpilot --binary-arm64 bin/driverpilot-linux-arm64 --version $(VERSION) --revision "$$(git rev-parse HEAD)" \
	  --source-date-epoch "$${SOURCE_DATE_EPOCH:-$$(git log -1 --format=%ct)}" --tag $(IMG) --out $(DIST)

bundle: ## The OLM bundle (bundle/, bundle.Dockerfile) from config/ for VERSION; REPLACES=x.y.z overrides the version it upgrades from.
	go run ./hack/bundle --version $(VERSION) $(if $(REPLACES),--replaces $(REPLACES))
