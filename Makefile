# Tools are pinned and run with `go run pkg@version`, so nothing needs a manual install.
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
NATS        := go run github.com/nats-io/natscli/nats@v0.5.0
GO_TEST_FLAGS ?= -race -count=1 -timeout 20m

.PHONY: all build test test-short lint vet staticcheck bench dev fmt tidy clean

all: build

build:
	go build ./...

## test: what README and CI run: vet, lint and every test with the race detector.
test: lint
	go test $(GO_TEST_FLAGS) ./...

test-short:
	go test -short -count=1 ./...

lint: vet staticcheck

vet:
	go vet ./...

staticcheck:
	go run $(STATICCHECK) ./...

bench:
	go run ./cmd/bench

dev:
	go run ./cmd/devstack

fmt:
	gofmt -s -w .

tidy:
	go mod tidy

clean:
	rm -rf bin .devstack
