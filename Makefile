# Weft — build, test and benchmark entry points. `make` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

GO        ?= go
BIN       := bin
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# The build date is the commit's (UTC), so the same source builds the same
# bytes; a tree with uncommitted changes says so in VERSION (-dirty).
BUILD_DATE ?= $(shell TZ=UTC git log -1 --format=%cd --date=format-local:%Y-%m-%dT%H:%M:%SZ 2>/dev/null)
LDFLAGS   := -X github.com/weftmesh/weft/internal/version.Version=$(VERSION) -X github.com/weftmesh/weft/internal/version.Commit=$(shell git rev-parse --short=12 HEAD 2>/dev/null) -X github.com/weftmesh/weft/internal/version.BuildDate=$(BUILD_DATE)
# Fuzz targets run briefly by `make test` (package:FuzzName:executions).
# Budgets are counts, sized to about 10 s each on a 2-core CI machine: a
# time budget can end inside the fuzz coordinator's shutdown race
# (golang/go#75804) and fail a run that found nothing. FUZZTIME=30s (or
# =1000x) overrides every target's budget.
FUZZTIME  ?=
FUZZ_TARGETS ?= $(shell cat .ci/fuzz-targets 2>/dev/null | grep -v '^\#')

.PHONY: help
help: ## list the targets
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z0-9_-]+:.*## /{printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## build weft-agent, meshctl, weft-cni and weft-lab (meshctl lab runs it) into bin/
	@mkdir -p $(BIN)
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/weft-agent ./agent/cmd/weft-agent
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/meshctl ./meshctl
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/weft-cni ./cni/cmd/weft-cni
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/weft-lab ./internal/lab/cmd/weft-lab

.PHONY: kube
kube: ## build the Kubernetes components the Kubernetes tests run (bin/kube; ~10 min once)
	./scripts/build-kube.sh

.PHONY: terraform-tools
terraform-tools: ## builds terraform v1.5.7, the small providers and the cloud-init schema checker into $WEFT_TERRAFORM_HOME (first time ~8 min)
	./terraform/tools/install.sh

# The Weft provider, built into the filesystem mirror of the Terraform
# tools so that configurations (terraform/examples) `terraform init` it as
# registry.terraform.io/weftmesh/weft 0.1.0.
TF_HOME           ?= $(or $(WEFT_TERRAFORM_HOME),$(HOME)/.cache/weft-terraform)
PROVIDER_VERSION  := 0.1.0
PROVIDER_BIN      := $(TF_HOME)/mirror/registry.terraform.io/weftmesh/weft/$(PROVIDER_VERSION)/linux_amd64/terraform-provider-weft_v$(PROVIDER_VERSION)

.PHONY: terraform-provider
terraform-provider: ## build terraform-provider-weft into $WEFT_TERRAFORM_HOME's provider mirror (weftmesh/weft 0.1.0)
	@mkdir -p $(dir $(PROVIDER_BIN))
	cd terraform/provider && $(GO) build -trimpath -ldflags '-X main.version=$(PROVIDER_VERSION)' -o $(PROVIDER_BIN).tmp . && mv $(PROVIDER_BIN).tmp $(PROVIDER_BIN)

# The provider is a module of its own (terraform/provider): ./... of the
# main module does not reach it. Its acceptance tests skip silently
# without TF_ACC, so it is set here.
.PHONY: test-provider
test-provider: terraform-tools terraform-provider ## the Terraform provider's unit and acceptance tests against a real seed in a lab (needs root)
	cd terraform/provider && TF_ACC=1 TF_ACC_TERRAFORM_PATH=$(TF_HOME)/bin/terraform $(GO) test -count=1 -timeout 20m -p 1 ./...

.PHONY: helm
helm: ## build the helm CLI the chart tests use (bin/helm; ~6 min once)
	./scripts/build-helm.sh

.PHONY: image
image: ## build the agent's container image as an OCI tar (bin/weft-image.tar, registry.local/weft:dev)
	./scripts/build-image.sh

.PHONY: generate
generate: ## rebuild the eBPF objects (clang-14, bpf2go) and other generated code
	$(GO) generate ./...

.PHONY: check-generate
check-generate: generate ## regenerate and fail when committed generated files differ
	@git diff --exit-code -- bpf/ || { echo "generated files differ from the committed ones: run 'make generate' and commit"; exit 1; }

.PHONY: test
# The Kubernetes binaries build first, before (not beside) the project's
# own compile: two 2 GB builds at once only slow each other.
test: kube helm build image terraform-tools terraform-provider ## every tier: unit, privileged and end-to-end (needs root; what CI runs)
	@if [ "$$(id -u)" != 0 ]; then echo "make test runs the privileged and e2e tiers and needs root: sudo make test (or make test-unit)"; exit 1; fi
	$(GO) test -count=1 -timeout 40m -p 1 ./...
	@$(MAKE) --no-print-directory test-provider
	@$(MAKE) --no-print-directory fuzz

.PHONY: test-unit
test-unit: ## unit tier only: no root needed, quick
	$(GO) test -count=1 -short ./...
	cd terraform/provider && $(GO) test -count=1 -short ./...

.PHONY: e2e
e2e: kube helm build image ## end-to-end tier only (needs root): the lab with the real binaries
	$(GO) test -count=1 -timeout 30m -v ./e2e/...

.PHONY: fuzz
fuzz: ## run every fuzz target briefly (count budgets in .ci/fuzz-targets; FUZZTIME=30s overrides)
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; rest=$${t#*:}; name=$${rest%%:*}; n=$${rest#*:}; \
		[ "$$n" != "$$rest" ] || { echo ".ci/fuzz-targets: $$t has no execution count (package:FuzzName:count)"; exit 1; }; \
		budget=$(if $(FUZZTIME),$(FUZZTIME),$${n}x); \
		echo "fuzz $$pkg $$name ($$budget)"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime "$$budget" $$pkg; \
	done

.PHONY: bench
bench: bench-go bench-tunnel bench-datapath bench-join bench-clusters bench-k8s bench-relay ## every benchmark (Go, tunnel, datapath, join, connected clusters, Kubernetes, relays)

.PHONY: bench-go
bench-go: ## Go benchmarks of the control plane (kvstore, identity, policy)
	$(GO) test -run '^$$' -bench . -benchmem -count 1 ./kvstore/... ./identity/... ./policy/...

.PHONY: bench-tunnel
bench-tunnel: build ## iperf3 through the underlay, Weft, wireguard-go and the Tailscale fork (needs root)
	./bench/tunnel/run.sh

.PHONY: bench-datapath
bench-datapath: ## eBPF policy cost, connection rate and throughput vs nftables (needs root)
	./bench/datapath/run.sh

.PHONY: bench-k8s
bench-k8s: kube helm build image ## Kubernetes: pod create -> Ready with policy vs the bridge plugin, NetworkPolicy -> enforced (needs root)
	WEFT_BENCH_K8S=$${N:-20} $(GO) test -count=1 -timeout 20m -run '^TestBenchKubernetes$$' -v ./e2e/ | grep -v '^ *time=\|level='

.PHONY: bench-relay
bench-relay: build ## relays: relayed vs direct TCP throughput, failover/recovery p50/p99 over N=10 cuts, join -> reachable behind symmetric NAT (needs root)
	WEFT_BENCH_RELAY=$${N:-10} $(GO) test -count=1 -timeout 20m -run '^TestBenchRelay$$' -v ./e2e/ | grep -v '^ *time=\|level='

.PHONY: bench-join
bench-join: build ## join-to-reachable and policy propagation in the lab (needs root)
	./bench/join/run.sh

# BENCH_CLUSTERS_FLAGS go to the program, e.g. -quick (a smoke run of
# seconds) or -clusters 2,8 -agents 20; `go run ./bench/clusters -h` lists them.
.PHONY: bench-clusters
bench-clusters: ## connected clusters: remote etcd watchers, CPU and propagation, mirror vs direct, 2/8/32 clusters (~5 min, no root)
	$(GO) run ./bench/clusters $(BENCH_CLUSTERS_FLAGS)

.PHONY: demo
demo: ## install what is needed, build, and bring up the demo lab
	./scripts/install-deps.sh
	@$(MAKE) --no-print-directory build
	./scripts/demo.sh

.PHONY: lint
lint: ## gofmt, go vet, staticcheck, and meshctl and weft-lab build for macOS
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	cd terraform/provider && $(GO) vet ./...
	$(GO) tool staticcheck ./...
	GOOS=darwin GOARCH=arm64 $(GO) build -o /dev/null ./meshctl
	GOOS=darwin GOARCH=arm64 $(GO) build -o /dev/null ./internal/lab/cmd/weft-lab

# Labs this checkout brought up (make demo) are recorded here; make clean
# removes those and no other lab on the machine (meshctl lab down --all
# lists the rest).
LABS_MADE := $(BIN)/labs-made

.PHONY: clean-kube
clean-kube: ## after a crashed Kubernetes test: remove its nodes' cgroups and containers (namespaces already gone; as root)
	$(GO) run ./internal/kubelab/cmd/kubelab-cleanup

.PHONY: clean
clean: ## remove the labs this checkout brought up (as root) and the build output
	@if [ -s $(LABS_MADE) ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "labs recorded in $(LABS_MADE) need root to remove: sudo make clean"; exit 1; fi; \
		$(BIN)/meshctl lab down --recorded $(LABS_MADE); \
	fi
	rm -rf $(BIN)
