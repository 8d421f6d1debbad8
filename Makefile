# carpool: `make demo` runs the closed loop on a local cluster; `make test` runs every test.
# Each target installs what it needs first (idempotent): the Python distribution, the
# control-plane and Prometheus binaries built from pinned Go modules, and (`make images`) the
# Debian packages that build and run the container images.

PYTHON ?= python3
STAMPS := .state/stamps
PYTEST_ARGS ?=
# Debian packages that `make images` and the image tests need (run as root on Debian 12).
IMAGE_PACKAGES := podman runc debootstrap

.PHONY: demo test lint unit e2e deps python-deps binaries images image-tools cluster-up \
	cluster-down clean

demo: deps
	$(PYTHON) -m carpool_cli.main demo

test: deps lint images
	$(PYTHON) -m pytest $(PYTEST_ARGS)

unit: python-deps
	$(PYTHON) -m pytest tests $(PYTEST_ARGS)

e2e: deps images
	$(PYTHON) -m pytest e2e $(PYTEST_ARGS)

lint: python-deps
	ruff check .
	ruff format --check .
	lint-imports

deps: python-deps binaries

python-deps: $(STAMPS)/python
$(STAMPS)/python: pyproject.toml
	@mkdir -p $(STAMPS)
	$(PYTHON) -m pip install --disable-pip-version-check -q -e '.[worker,dev]'
	@touch $@

# The operator and worker images (images/Containerfile), tagged with the chart's appVersion,
# built with podman on a Debian base made by debootstrap; nothing is pulled from a registry.
images: image-tools
	images/build.sh

image-tools:
	@missing="$$(for package in $(IMAGE_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$package 2>/dev/null | grep -qx 'install ok installed' \
			|| echo $$package; done)"; \
	if [ -n "$$missing" ]; then \
		echo "apt-get install $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

binaries: python-deps
	$(PYTHON) -m carpool_cli.main cluster build

cluster-up: deps
	$(PYTHON) -m carpool_cli.main cluster up --gpu-nodes 2

cluster-down:
	$(PYTHON) -m carpool_cli.main cluster down

clean:
	rm -rf .state .pytest_cache .ruff_cache
