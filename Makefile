# Entry point for building and testing stigmer.
#   make test      build the fixture components, then run the integration tests
#   make build     release binary embedding $(COMPONENTS)
#   make run       build, then list and run a component through the binary
.DELETE_ON_ERROR:

CARGO ?= cargo
FIXTURES := $(CURDIR)/target/fixtures/components
COMPONENTS ?= $(FIXTURES)

.PHONY: all fixtures test build run clean

all: build

fixtures:
	tests/fixtures/build.sh $(FIXTURES)

test: fixtures
	STIGMER_COMPONENTS_DIR=$(FIXTURES) $(CARGO) nextest run --no-fail-fast

# Depends on the fixtures until reference components exist.
build: fixtures
	STIGMER_COMPONENTS_DIR=$(abspath $(COMPONENTS)) $(CARGO) build --release

run: build
	target/release/stigmer --list
	target/release/stigmer exec probe hello

clean:
	$(CARGO) clean
	rm -rf target/fixtures target/venv
