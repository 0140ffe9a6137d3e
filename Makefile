# CoucheStor — build, generate, test.
# The two commands of the README: `make run-local` (later `make demo`) and `make test`.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c

LOCALBIN ?= $(CURDIR)/bin
CONTROLLER_GEN_VERSION ?= v0.23.0
CONTROLLER_GEN ?= $(LOCALBIN)/controller-gen-$(CONTROLLER_GEN_VERSION)
GO_TEST_FLAGS ?= -count=1 -timeout 30m

.PHONY: all
all: build

##@ Generation

$(CONTROLLER_GEN):
	@mkdir -p $(LOCALBIN)
	GOBIN=$(LOCALBIN) go install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_GEN_VERSION)
	mv -f $(LOCALBIN)/controller-gen $(CONTROLLER_GEN)

.PHONY: generate
generate: $(CONTROLLER_GEN) ## deepcopy functions from the API types
	$(CONTROLLER_GEN) object paths=./apis/...

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## CRDs, RBAC and webhook manifests from the code's markers
	$(CONTROLLER_GEN) crd:allowDangerousTypes=true paths=./apis/storage/... paths=./apis/dataplane/... output:crd:artifacts:config=config/crd/bases
	$(CONTROLLER_GEN) crd paths=./apis/mayastor/v1alpha1/... paths=./apis/mayastor/v1beta2/... output:crd:artifacts:config=config/crd/external
	$(CONTROLLER_GEN) crd paths=./apis/mayastor/v1beta3/... output:crd:artifacts:config=config/crd/external/v1beta3
	$(CONTROLLER_GEN) rbac:roleName=couchestor-manager paths=./controllers/... paths=./webhooks/... paths=./internal/helmhybrid/... paths=./pkg/conversion/... output:rbac:artifacts:config=config/rbac
	$(CONTROLLER_GEN) webhook paths=./webhooks/... output:webhook:artifacts:config=config/webhook

.PHONY: bundle
bundle: manifests ## OLM bundle (bundle/), the install chart's generated files (from config/) and config/csi (from the chart's CSI templates) (hack/bundlegen)
	go run ./hack/bundlegen

GO_MODULES := . hack/image hack/tools/etcd hack/tools/controlplane

.PHONY: tidy
tidy: ## go mod tidy in every module (direct imports required directly, nothing unused)
	@for m in $(GO_MODULES); do (cd $$m && go mod tidy); done

GENERATED := apis config bundle helm-charts $(foreach m,$(GO_MODULES),$(m)/go.mod $(m)/go.sum)

.PHONY: verify-generated
verify-generated: generate manifests bundle tidy ## fail when a generated file or a go.mod/go.sum is stale
	@if [ -n "$$(git status --porcelain -- $(GENERATED))" ]; then \
	  echo "generated files are stale; run 'make generate manifests bundle tidy' and commit:"; \
	  git status --porcelain -- $(GENERATED); git diff --stat -- $(GENERATED); exit 1; fi

##@ Build

IMAGE_ARCHIVE ?= $(LOCALBIN)/couchestor-image.tar
.PHONY: image
image: ## OCI image archive (empty base + static binary, non-root) without a Docker engine
	@mkdir -p $(LOCALBIN)
	cd hack/image && go run . --root $(CURDIR) --out $(IMAGE_ARCHIVE)

.PHONY: csi-node-image
csi-node-image: ## the CSI node plugin's image archive: the binary plus nbdfuse, losetup, mkfs.ext4/xfs... from Debian packages (hack/csi-node-image.sh)
	@mkdir -p $(LOCALBIN)
	hack/csi-node-image.sh $(LOCALBIN)/couchestor-csi-node-image.tar

.PHONY: build
build: ## the operator binary
	@mkdir -p $(LOCALBIN)
	CGO_ENABLED=0 go build -o $(LOCALBIN)/couchestor .

.PHONY: envtest
envtest: ## kube-apiserver, etcd and kubectl for tests (built once, cached by version)
	@hack/envtest.sh

.PHONY: prometheus
prometheus: ## a real Prometheus for integration tests
	@hack/prometheus.sh

##@ Test

.PHONY: vet
vet:
	go vet ./...

# SKIP_CLUSTER=1 leaves the real-cluster suite out of `make test` (said loudly);
# CI never sets it.
SKIP_CLUSTER ?=
CLUSTER_LOCK ?= $${TMPDIR:-/tmp}/couchestor-cluster.lock

.PHONY: test
test: verify-generated vet build ## everything CI runs: generated files fresh, unit, envtest and e2e suites, then tests/cluster where the machine can run it
	@assets="$$(hack/envtest.sh)"; \
	prom="$$(hack/prometheus.sh)"; \
	hack/nbd-clients.sh; \
	echo "KUBEBUILDER_ASSETS=$$assets COUCHESTOR_PROMETHEUS=$$prom"; \
	KUBEBUILDER_ASSETS="$$assets" COUCHESTOR_PROMETHEUS="$$prom" COUCHESTOR_BIN="$(LOCALBIN)/couchestor" \
	  go test $(GO_TEST_FLAGS) ./...
	@$(MAKE) --no-print-directory test-cluster-if-possible

# The real-cluster suite after the rest of `make test`: run where
# `hack/cluster.sh can` says the machine can (root, Linux, the Debian packages
# or apt), else a loud line saying it was skipped and why. One cluster per
# machine: a second `make test` waits for the first's cluster (CLUSTER_LOCK).
.PHONY: test-cluster-if-possible
test-cluster-if-possible:
	@if [ -n "$(SKIP_CLUSTER)" ]; then \
	  printf '\n!!!!!!!! tests/cluster SKIPPED: SKIP_CLUSTER=%s was set; make test did NOT run the real-cluster suite !!!!!!!!\n\n' "$(SKIP_CLUSTER)"; exit 0; fi; \
	if ! why="$$(hack/cluster.sh can)"; then \
	  printf '\n!!!!!!!! tests/cluster SKIPPED: this machine cannot run the real cluster: %s !!!!!!!!\n\n' "$$why"; exit 0; fi; \
	flock "$(CLUSTER_LOCK)" $(MAKE) --no-print-directory test-cluster

.PHONY: test-cluster
test-cluster: image ## only tests/cluster: the charts installed with the real helm CLI in a real single-node Kubernetes (root)
	@why="$$(hack/cluster.sh can)" || { echo "tests/cluster cannot run here: $$why"; exit 1; }; \
	hack/cluster.sh bins >/dev/null; hack/cluster.sh helm >/dev/null; \
	prom="$$(hack/prometheus.sh)" || exit 1; \
	COUCHESTOR_CLUSTER_TESTS=1 COUCHESTOR_PROMETHEUS="$$prom" COUCHESTOR_IMAGE_ARCHIVE="$(IMAGE_ARCHIVE)" go test -count=1 -timeout 40m -v ./tests/cluster/

##@ Cluster

.PHONY: cluster-up
cluster-up: image ## a real single-node Kubernetes (containerd, kubelet, kube-proxy, control plane) on this machine; prints the kubeconfig
	@COUCHESTOR_IMAGE_ARCHIVE="$(IMAGE_ARCHIVE)" hack/cluster.sh up

.PHONY: cluster-down
cluster-down: ## stop the cluster and remove everything cluster-up created (also after a crash)
	@hack/cluster.sh down

.PHONY: bench
bench: ## benchmarks (not timed tests; compare ratios within one run)
	@assets="$$(hack/envtest.sh)"; KUBEBUILDER_ASSETS="$$assets" go test -run '^$$' -bench . -benchmem -count 5 ./... | tee bench.txt

.PHONY: bench-scale
bench-scale: build ## the operator binary cold-started over N ECStripes in a real API server (COUCHESTOR_SCALE_STRIPES, counts ascending; default 50000,100000): time to settle, VmRSS/VmHWM, bytes per stripe (tens of minutes)
	@assets="$$(hack/envtest.sh)"; COUCHESTOR_SCALE_STRIPES=$${COUCHESTOR_SCALE_STRIPES:-50000,100000} KUBEBUILDER_ASSETS="$$assets" \
	  COUCHESTOR_BIN=$(LOCALBIN)/couchestor go test -run '^$$' -bench ECStripeScale -benchtime 1x -timeout 120m -v ./tests/integration/ecscale/

.PHONY: bench-rest
bench-rest: build ## one StoragePolicy evaluation over 10,000 volumes through the REST backend (operator binary + REST double + Prometheus): REST requests, time, operator RSS (minutes)
	@assets="$$(hack/envtest.sh)"; prom="$$(hack/prometheus.sh)"; COUCHESTOR_REST_SCALE_VOLUMES=$${COUCHESTOR_REST_SCALE_VOLUMES:-10000} \
	  KUBEBUILDER_ASSETS="$$assets" COUCHESTOR_PROMETHEUS="$$prom" COUCHESTOR_BIN=$(LOCALBIN)/couchestor \
	  go test -run '^$$' -bench RESTEvaluation -benchtime 1x -timeout 60m -v ./tests/integration/restscale/

.PHONY: bench-csi
bench-csi: build ## fio on ext4 through the CSI driver (3 shard servers, 2+1, nbdfuse+loop) vs ext4 on a loop device of a local file, one run (root; minutes)
	@assets="$$(hack/envtest.sh)"; hack/nbd-clients.sh; COUCHESTOR_CSI_FIO=1 KUBEBUILDER_ASSETS="$$assets" COUCHESTOR_BIN=$(LOCALBIN)/couchestor \
	  go test -run '^$$' -bench FioDriverVsLoop -benchtime 1x -timeout 60m -v ./tests/integration/csi/

##@ Run

.PHONY: run-local
run-local: build ## local control plane + CRDs + the operator; kubeconfig in .local/kubeconfig
	@go build -o $(LOCALBIN)/runlocal ./hack/runlocal
	@assets="$$(hack/envtest.sh)"; KUBEBUILDER_ASSETS="$$assets" exec $(LOCALBIN)/runlocal --bin $(LOCALBIN)/couchestor

DEMO_DURATION ?= 0
# DEMO_CSI: the CSI pod step in the real cluster: auto (where the cluster's
# binaries are built, else say how), build (build them first: about 20 min
# once), off.
DEMO_CSI ?= auto
.PHONY: demo
demo: build ## the main job on an embedded default: simulator + Prometheus + operator + shard servers (tiering and an erasure-coded rebuild), live; then pods on an erasure-coded PVC in the real cluster where this machine runs it
	@go build -o $(LOCALBIN)/mayastorsim ./tests/mayastorsim
	@go build -o $(LOCALBIN)/demo ./hack/demo
	@assets="$$(hack/envtest.sh)"; prom="$$(hack/prometheus.sh)"; \
	  KUBEBUILDER_ASSETS="$$assets" exec $(LOCALBIN)/demo --bin $(LOCALBIN)/couchestor --sim $(LOCALBIN)/mayastorsim \
	    --prometheus "$$prom" --duration $(DEMO_DURATION) --csi $(DEMO_CSI) --cluster-lock "$(CLUSTER_LOCK)"

.PHONY: clean
clean:
	rm -rf $(LOCALBIN) .local
