# nodeforge: build virtual-machine node images from Kubernetes custom resources.
#
# The two set-up commands a newcomer runs on a fresh Debian machine:
#   make image   build and verify the sample node image locally, into out/
#   make test    run every test (installs what it needs)

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

CONTROLLER_GEN_VERSION ?= v0.23.0
CONTROLLER_GEN ?= go run sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_GEN_VERSION)

# Test binaries and other pinned tools are cached outside the work tree,
# keyed by version (see hack/tools.sh).
export NODEFORGE_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/nodeforge

# One Go build configuration for the tests, the binaries and the pinned
# tools (hack/tools.sh builds those with CGO_ENABLED=0 and -trimpath): a
# package compiled once serves them all from the build cache, where two
# configurations compiled every dependency twice (docs/benchmarks.md, Cold
# CI). The binaries are static and carry no local paths.
export CGO_ENABLED ?= 0
override GOFLAGS := $(strip $(filter-out -trimpath,$(GOFLAGS)) -trimpath)
export GOFLAGS

OUT ?= out
BIN ?= bin
IMG ?= nodeforge.local/builder:dev

.PHONY: all
all: build

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  %-16s %s\n", $$1, $$2 } /^##@/ { printf "\n%s\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

.PHONY: generate
generate: ## Generate DeepCopy methods.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./api/..."

.PHONY: manifests
manifests: ## Generate CRDs and RBAC from markers.
	$(CONTROLLER_GEN) rbac:roleName=nodeforge-manager crd paths="./..." output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac

.PHONY: docs
docs: ## Regenerate the field reference in docs/spec from the CRDs.
	go run ./hack/gendocs

.PHONY: fmt
fmt: ## Run gofmt.
	gofmt -l -w $$(git ls-files '*.go')

.PHONY: vet
vet: ## Run go vet.
	go vet ./...

.PHONY: lint
lint: ## Run golangci-lint (built once, pinned in hack/tools.sh).
	"$$(hack/tools.sh lint)/golangci-lint" run ./...

.PHONY: verify
verify: generate manifests docs ## Fail when generated files or formatting are stale.
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	@git diff --exit-code -- api config docs/spec || { echo "generated files are stale: run 'make generate manifests docs' and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- api config docs/spec)" || { echo "untracked generated files:"; git status --porcelain -- api config docs/spec; exit 1; }
	@go mod tidy -diff >/dev/null || { echo "go.mod/go.sum are not tidy: run 'go mod tidy' and commit"; exit 1; }

##@ Test

.PHONY: envtest-assets
envtest-assets: ## Build (once) kube-apiserver, etcd and kubectl for envtest.
	@hack/tools.sh envtest

.PHONY: test
test: ## Run all tests: unit, envtest against a real API server, integration.
	hack/test.sh

.PHONY: bench
bench: ## Measure build time, image size, boot verification and upload speed (docs/benchmarks.md).
	hack/bench.sh

.PHONY: test-arm64
test-arm64: ## Build the arm64 sample, verify it offline and by a TCG boot (not in CI: emulated, slow); ARM64_BOOT=0 skips the boot.
	hack/deps.sh arm64
	NODEFORGE_ARM64=1 NODEFORGE_ARM64_BOOT=$(or $(ARM64_BOOT),1) NODEFORGE_REQUIRE_INTEGRATION=1 \
		go test ./test/integration -run '^TestBuildAndVerifyARM64Image$$' -count=1 -timeout 90m -v

.PHONY: test-unit
test-unit: ## Run unit tests only (no API server, no network).
	go test ./... -short

##@ Build

.PHONY: build
build: ## Build the manager and CLI into bin/.
	CGO_ENABLED=0 go build -trimpath -o $(BIN)/manager ./cmd/manager
	CGO_ENABLED=0 go build -trimpath -o $(BIN)/nodeforge ./cmd/nodeforge

.PHONY: image
image: ## Build and verify the sample node image locally into out/.
	hack/image.sh

.PHONY: image-arm64
image-arm64: ## Build and verify the minimal arm64 sample locally into out/ (qemu-user-static, AAVMF; TCG boot).
	hack/image-arm64.sh

##@ End to end

.PHONY: test-e2e
test-e2e: ## Local cluster up, e2e suite (test/e2e), cluster down even on failure.
	test/e2e/run.sh $(E2E_FLAGS)

.PHONY: dev
dev: ## Bring up the local cluster and leave it running (see docs/local-cluster.md).
	hack/local-cluster.sh up >/dev/null
	@hack/local-cluster.sh status
	@echo; echo "Use it with:"; hack/local-cluster.sh env | sed 's/^/  /'

.PHONY: dev-down
dev-down: ## Stop the local cluster and remove everything it made.
	hack/local-cluster.sh down

##@ Deploy

KUSTOMIZE ?= go run sigs.k8s.io/kustomize/kustomize/v5@v5.7.1
KUBECTL ?= kubectl
BUILDER_IMG ?= $(IMG)
MANAGER_IMG ?= nodeforge.local/manager:dev

.PHONY: builder-image
builder-image: ## Build the builder image as an OCI tarball, out/builder-image.tar (no container engine needed).
	IMG=$(BUILDER_IMG) hack/build-builder-image.sh out/builder-image.tar

.PHONY: manager-image
manager-image: ## Build the manager image as an OCI tarball (prints its reference and path).
	hack/local-cluster/go-image.sh ./cmd/manager $(firstword $(subst :, ,$(MANAGER_IMG)))

.PHONY: run
run: ## Run the manager against the current kubeconfig (CRDs must be installed: make deploy, or kubectl apply -k config/crd).
	go run ./cmd/manager --builder-image=$(BUILDER_IMG) --metrics-bind-address=0 --health-probe-bind-address=127.0.0.1:8081 --zap-devel

.PHONY: deploy
deploy: ## Install CRDs, RBAC and the manager (config/default); MANAGER_IMG and BUILDER_IMG name the images.
	$(KUSTOMIZE) build config/default | sed -e 's|registry.example.com/nodeforge/manager:dev|$(MANAGER_IMG)|' -e 's|registry.example.com/nodeforge/builder:dev|$(BUILDER_IMG)|' | $(KUBECTL) apply -f -

.PHONY: undeploy
undeploy: ## Remove what deploy installed (deleting the CRDs deletes every NodeImage).
	$(KUSTOMIZE) build config/default | $(KUBECTL) delete --ignore-not-found -f -
