# tenantpg developer targets. Integration tests start throwaway PostgreSQL
# and PgBouncer servers (see internal/pgtest); without the binaries they are
# skipped, unless CI=true.

GO ?= go

.PHONY: test demo bench

## test: gofmt check, go vet, then all tests with the race detector
test:
	@unformatted="$$(gofmt -l .)"; \
	if [ -n "$$unformatted" ]; then \
		echo "gofmt -l reports unformatted files:"; echo "$$unformatted"; exit 1; \
	fi
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 20m ./...

## demo: run the demo command
demo:
	$(GO) run ./cmd/tenantpg-demo

## bench: run all benchmarks (no tests)
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...
