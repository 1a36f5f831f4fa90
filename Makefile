# tenantpg developer targets. Integration tests and the demo start throwaway
# PostgreSQL and PgBouncer servers (see internal/pgtest); scripts/ensure-servers.sh
# installs them as root on Debian, and CI=true turns a missing server into a
# failure instead of a skip.

GO ?= go
# The library module plus the modules that keep heavy dependencies (ORMs,
# Prometheus) out of the library's go.mod. Each is tested on its own.
MODULES := . $(patsubst %/go.mod,%,$(wildcard */go.mod */*/go.mod))

# tenantpg's rows implement Go 1.27's driver.RowsColumnScanner in a file
# only Go 1.27 builds (rows_go127.go); make test runs their tests with it too
# (the go command fetches this toolchain from the module proxy once).
GO127 ?= go1.27.3

.PHONY: test demo bench bench-report servers fmt soak fuzz

## servers: install PostgreSQL and PgBouncer when missing (root on Debian)
servers:
	@scripts/ensure-servers.sh

## test: gofmt check, go vet, then all tests of every module with the race detector, and the rows tests on Go 1.27
test: servers
	@unformatted="$$(gofmt -l .)"; \
	if [ -n "$$unformatted" ]; then \
		echo "gofmt -l reports unformatted files:"; echo "$$unformatted"; exit 1; \
	fi
	@set -e; for m in $(MODULES); do \
		echo "== module $$m"; \
		(cd $$m && $(GO) vet ./... && $(GO) test -race -count=1 -timeout 20m ./...); \
	done
	@echo "== $(GO127): rows against pgx stdlib's (rows_go127.go)"
	GOTOOLCHAIN=$(GO127) $(GO) vet . && GOTOOLCHAIN=$(GO127) $(GO) test -race -count=1 -run '^TestRows' ./integration

## demo: start throwaway servers and run the demo app through tenantpg
demo: servers
	cd cmd/tenantpg-demo && $(GO) run .

## bench: Go benchmarks (exec modes, checkout, many tenants) on throwaway servers
bench: servers
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 3000x ./...

## bench-report: the interleaved comparisons of docs/benchmarks.md, its chart and the instruction counts of its section 7
## (about 30 minutes; longer when the host steals CPU time, whose rounds are run again; needs valgrind, installed as root on Debian)
bench-report: servers
	@scripts/ensure-valgrind.sh
	$(GO) run ./cmd/tenantpg-bench -out docs/benchmarks.md -svg docs/benchmarks.svg

## soak: the chaos isolation test at 500,000 operations (TENANTPG_CHAOS_OPS to change; about an hour),
## then the fault suites, with the race detector; see docs/reliability.md
soak: servers
	TENANTPG_SOAK=1 $(GO) test -race -count=1 -timeout 6h -v -run 'TestChaosIsolation|TestFault' ./integration/

## fuzz: run every fuzz test of the library for FUZZTIME each (default 1m); failing inputs land in testdata/fuzz
FUZZTIME ?= 1m
fuzz:
	@set -e; for f in $$($(GO) test -list '^Fuzz' . | grep '^Fuzz'); do \
		echo "== $$f"; \
		$(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) . ; \
	done

fmt:
	gofmt -w .
