# The two set-up commands: `make demo` and `make test`. Each installs what it needs.
VENV := .venv
MOTO := $(VENV)/bin/moto_server
PYTHON ?= python3

.PHONY: demo test crd bench lint moto image

# moto (a local EC2 API emulator) lives in a project-local virtualenv.
$(MOTO):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check 'moto[ec2,server]>=5.1,<6'

moto: $(MOTO)

## Run tend locally against a sandbox API server and moto, and watch a Workspace's life.
demo: $(MOTO)
	cargo build --bin tend --example demo
	cargo run --quiet --example demo

## Run every test (unit, property and integration).
test: $(MOTO)
	@if cargo nextest --version >/dev/null 2>&1; then \
		cargo nextest run --lib --bins --tests --no-fail-fast; \
	else \
		cargo test --lib --bins --tests --no-fail-fast; \
	fi

## Benchmark the sweep (simulated EC2, paused clock), detection end to end (moto), and the
## controller as its own process over large fleets; see BENCHMARKS.md.
bench: $(MOTO)
	cargo bench --bench sweep
	cargo bench --bench controller

## Build the container image ghcr.io/tend-dev/tend:VERSION (IMAGE=... for another
## name): the Dockerfile with docker or podman where an engine runs, else buildah.
image:
	sh scripts/build-image.sh

## Regenerate the committed CRD from the code.
crd:
	cargo run --quiet --bin tend -- crd > crds/workspace.yaml

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
