SHELL := /bin/bash
# uproxy — node-local Kubernetes service proxy.
# `make test` is the project's test command (unit tests + integration bed).

GO        ?= go
# The Go release everything is built and tested with: go1.26.8 (the machine's)
# has standard-library advisories that govulncheck reports; the go command
# fetches go1.27.3 from the module proxy on first use. The control plane
# (integration/testbin) keeps the machine's Go, the release it is known to
# build with.
export GOTOOLCHAIN ?= go1.27.3
GOFLAGS_T ?= -race -count=1
PKGS_UNIT  = $(shell $(GO) list ./... | grep -v /integration)
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS    = -s -w -X github.com/uproxy/uproxy/cmd/uproxy/version.Version=$(VERSION)

.PHONY: all build test test-unit test-integration testbin lint bench bench-ab demo demo-fast fuzz vulncheck clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/uproxy ./cmd/uproxy
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/echoserver ./integration/echoserver

test: test-unit vulncheck test-integration

test-unit:
	$(GO) vet ./...
	$(GO) test $(GOFLAGS_T) $(PKGS_UNIT)
	$(GO) test -run '^$$' -bench . -benchtime=1x $(PKGS_UNIT)
	FUZZTIME=$${FUZZTIME:-4s} ./scripts/fuzz.sh

# The integration bed needs root, the control plane (make testbin) and the binary.
test-integration: testbin build
	mkdir -p bin
	$(GO) test $(GOFLAGS_T) -p 1 -timeout 60m -v ./integration/... 2>&1 | tee bin/integration.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|SUMMARY|panic)' ; \
		rc=$${PIPESTATUS[0]}; if [ $$rc != 0 ]; then ./scripts/failure-digest.sh bin/integration.log; fi; exit $$rc

testbin:
	./integration/testbin/build.sh

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

fuzz:
	./scripts/fuzz.sh

# govulncheck against a pinned snapshot of the vulnerability database (the
# module golang.org/x/vulndb; vuln.go.dev is not reachable from CI).
vulncheck:
	./scripts/vulncheck.sh

bench: testbin build
	./scripts/setup.sh --bench
	UPROXY_BENCH=1 $(GO) test -count=1 -timeout 60m -run '^TestBench$$' -v ./integration/bench/...

# bench-ab AB="old=/tmp/uproxy-old new=bin/uproxy" [AB_MEASURES="keepalive close dns bulk profile-keepalive"]
bench-ab: testbin build
	./scripts/setup.sh --bench
	UPROXY_BENCH=1 UPROXY_BENCH_AB="$(AB)" UPROXY_BENCH_AB_MEASURES="$(AB_MEASURES)" \
		$(GO) test -count=1 -timeout 60m -run '^TestBenchAB$$' -v ./integration/bench/...

# demo installs what the bed needs and never skips: a missing tool, root or
# binary fails it (UPROXY_REQUIRE_ROOT=1) instead of printing SKIP and PASS.
# It runs the seed on the kubelet node (integration/node): uproxy deployed
# with `kubectl apply -f deploy/` as the README says; `make demo-fast` runs it
# on the namespace bed.
demo: testbin build
	./scripts/setup.sh
	UPROXY_REQUIRE_ROOT=1 $(GO) test -count=1 -timeout 30m -run '^TestDemo$$' -v ./integration/node/

demo-fast: testbin build
	./scripts/setup.sh
	UPROXY_REQUIRE_ROOT=1 $(GO) test -count=1 -timeout 20m -run '^TestDemo$$' -v ./integration/

clean:
	rm -rf bin
