# carpool: `make demo` runs the closed loop on a local cluster; `make test` runs every test.
# Each target installs what it needs first (idempotent): Debian packages, the Python
# distribution, and the control-plane binaries built from pinned Go modules.

PYTHON ?= python3
STAMPS := .state/stamps
PYTEST_ARGS ?=

.PHONY: demo test lint unit e2e deps apt-deps python-deps binaries cluster-up cluster-down clean

demo: deps
	carpool demo

test: deps lint
	$(PYTHON) -m pytest $(PYTEST_ARGS)

unit: python-deps
	$(PYTHON) -m pytest tests $(PYTEST_ARGS)

e2e: deps
	$(PYTHON) -m pytest e2e $(PYTEST_ARGS)

lint: python-deps
	ruff check .
	ruff format --check .
	lint-imports

deps: apt-deps python-deps binaries

apt-deps: $(STAMPS)/apt
$(STAMPS)/apt:
	@mkdir -p $(STAMPS)
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then \
	  echo "installing Debian's prometheus package (Prometheus and promtool)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus; \
	fi
	@touch $@

python-deps: $(STAMPS)/python
$(STAMPS)/python: pyproject.toml
	@mkdir -p $(STAMPS)
	$(PYTHON) -m pip install --disable-pip-version-check -q -e '.[worker,dev]'
	@touch $@

binaries: python-deps
	carpool cluster build

cluster-up: deps
	carpool cluster up --gpu-nodes 2

cluster-down:
	carpool cluster down

clean:
	rm -rf .state .pytest_cache .ruff_cache
