# tenantpg developer targets. Integration tests and the demo start throwaway
# PostgreSQL and PgBouncer servers (see internal/pgtest); scripts/ensure-servers.sh
# installs them as root on Debian, and CI=true turns a missing server into a
# failure instead of a skip.

GO ?= go

.PHONY: test demo bench servers

## servers: install PostgreSQL and PgBouncer when missing (root on Debian)
servers:
	@scripts/ensure-servers.sh

## test: gofmt check, go vet, then all tests with the race detector
test: servers
	@unformatted="$$(gofmt -l .)"; \
	if [ -n "$$unformatted" ]; then \
		echo "gofmt -l reports unformatted files:"; echo "$$unformatted"; exit 1; \
	fi
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 20m ./...

## demo: start throwaway servers and run the demo app through tenantpg
demo: servers
	$(GO) run ./cmd/tenantpg-demo

## bench: exec-mode and routing benchmarks on throwaway servers
bench: servers
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 3000x ./...
