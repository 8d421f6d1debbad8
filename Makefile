# carpool: `make demo` runs the closed loop on a local cluster; `make test` runs every test.
# Each target installs what it needs first (idempotent): the Python distribution and the
# control-plane and Prometheus binaries built from pinned Go modules.

PYTHON ?= python3
STAMPS := .state/stamps
PYTEST_ARGS ?=

.PHONY: demo test lint unit e2e deps python-deps binaries cluster-up cluster-down clean

demo: deps
	$(PYTHON) -m carpool_cli.main demo

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

deps: python-deps binaries

python-deps: $(STAMPS)/python
$(STAMPS)/python: pyproject.toml
	@mkdir -p $(STAMPS)
	$(PYTHON) -m pip install --disable-pip-version-check -q -e '.[worker,dev]'
	@touch $@

binaries: python-deps
	$(PYTHON) -m carpool_cli.main cluster build

cluster-up: deps
	$(PYTHON) -m carpool_cli.main cluster up --gpu-nodes 2

cluster-down:
	$(PYTHON) -m carpool_cli.main cluster down

clean:
	rm -rf .state .pytest_cache .ruff_cache
