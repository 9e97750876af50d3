# Tools are pinned and run with `go run pkg@version`, so nothing needs a manual install.
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
NATS_CLI    := github.com/nats-io/natscli/nats@v0.5.0
GO_TEST_FLAGS ?= -race -count=1 -timeout 20m

.PHONY: all build test test-chaos test-short lint vet staticcheck archtest bench dev demo-esimctl nats up down fmt tidy clean

all: build

build:
	go build ./...

## test: what README and CI run: vet, lint and every test with the race detector.
test: lint
	go test $(GO_TEST_FLAGS) ./...

## test-chaos: the reliability tests (real processes killed with SIGKILL, a
## cluster losing a leader, fault storms, hostile requests and values, a
## secrets scan of logs and streams), then each fuzz target briefly: the
## command decoders, the callback parsers, the credential stripper and the
## ingest's HTTP handler as a whole (FuzzIntake: a running ingest on
## embedded NATS). No -race: the services under test run as
## separate binaries, and their packages already run with -race in `make test`.
## The fuzz budgets are counts of inputs, not durations: Go 1.26's fuzzing
## coordinator can fail a duration budget with "context deadline exceeded"
## at its end on a busy machine (golang/go#75804, fixed in Go 1.27).
test-chaos:
	RELIABILITY=1 go test -v -count=1 -timeout 15m ./test/reliability/...
	go test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime 150000x ./internal/command
	go test -run '^$$' -fuzz '^FuzzParseCallback$$' -fuzztime 200000x ./internal/thingspace
	go test -run '^$$' -fuzz '^FuzzDecodeDoc$$' -fuzztime 200000x ./internal/command
	go test -run '^$$' -fuzz '^FuzzFastDecode$$' -fuzztime 150000x ./internal/command
	go test -run '^$$' -fuzz '^FuzzPlainMatchesTolerant$$' -fuzztime 200000x ./internal/thingspace
	go test -run '^$$' -fuzz '^FuzzStripCredentials$$' -fuzztime 200000x ./internal/callback
	go test -run '^$$' -fuzz '^FuzzIntake$$' -fuzztime 20000x ./internal/callback

test-short:
	go test -short -count=1 ./...

lint: vet staticcheck archtest

## archtest: the import direction of the layers (models, adapters, application, cmd).
archtest:
	go test -count=1 ./internal/archtest

vet:
	go vet ./...

staticcheck:
	go run $(STATICCHECK) ./...

## bench: the benchmarks of BENCHMARKS.md, each next to its baseline (about 5 minutes; not part of test).
## BENCH_FLAGS passes flags, e.g. BENCH_FLAGS='-short' for a smoke run or '-keep' to keep logs and profiles.
BENCH_FLAGS ?=
bench:
	go run ./cmd/bench $(BENCH_FLAGS)

## dev: the whole pipeline in one process (see README, "Dev stack"). The binary
## is built, then run in the recipe's place (exec), so Ctrl-C reaches it alone
## of the recipe and it ends the way the stack does: "devstack: stopped",
## exit 0. (`go run` turns the stack's exit after an interrupt into 1, which
## make reported as "Error 1".) DEV_FLAGS passes flags, e.g. DEV_FLAGS='--fail-share 0.1'.
DEV_FLAGS ?=
dev:
	@mkdir -p bin
	go build -o bin/devstack ./cmd/devstack
	exec bin/devstack $(DEV_FLAGS)

## demo-esimctl: with `make dev` running in another terminal, enable the 20 SIMs of
## examples/devices.csv (one has a bad ICCID: exit 1 is the expected end), then show one SIM.
demo-esimctl:
	go build -o bin/esimctl ./cmd/esimctl
	bin/esimctl submit --action enable --account 0000123456-00001 \
		--smsr-oid 1.3.6.1.4.1.31746.1.500.200.101.5 examples/devices.csv || test $$? -eq 1
	bin/esimctl status 89148000000000000101

## nats: the pinned NATS CLI as bin/nats.
nats:
	GOBIN=$(CURDIR)/bin go install $(NATS_CLI)

up:
	docker compose up --build -d

down:
	docker compose down

fmt:
	gofmt -s -w .

tidy:
	go mod tidy

clean:
	rm -rf bin .devstack
