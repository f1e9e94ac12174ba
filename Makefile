# The two commands a new user needs: `make demo` and `make test`.
# Both create .venv and install everything on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test check lint protos protos-check bench clean chromium

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Run the demo: control plane on SQLite + process agent + engine; a flow runs and its logs stream here.
## EXAMPLE=etl runs the flow written with tasks instead of examples/hello.
demo: $(STAMP)
	$(BIN)/flowyard demo $(if $(EXAMPLE),--example $(EXAMPLE))

## Run the whole test suite: protocol checks, lint, types, then unit, integration and end-to-end tests.
test: $(STAMP) check chromium
	$(BIN)/python -m pytest -n 2 --dist loadfile

## The browser tests drive the system's Chromium (Debian's package), never a downloaded one.
chromium:
	@command -v chromium >/dev/null 2>&1 || test -n "$$FLOWYARD_CHROMIUM" || { \
	  echo "installing Debian's chromium for the browser tests" >&2; \
	  SUDO=$$(test "$$(id -u)" -eq 0 || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

## Static checks: generated stubs up to date, buf lint, ruff, mypy, import contracts.
check: $(STAMP) protos-check lint

lint: $(STAMP)
	cd proto && ../$(BIN)/buf lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

## Regenerate the Python modules and stubs beside the .proto files.
protos: $(STAMP)
	PYTHON=$(CURDIR)/$(BIN)/python proto/generate.sh

## Fail if regenerating the stubs changes anything.
protos-check: protos
	@git diff --exit-code -- proto/ && test -z "$$(git ls-files --others --exclude-standard proto/)" \
	  || { echo "error: generated stubs are out of date: run 'make protos' and commit" >&2; exit 1; }

## Benchmark: 50 sequential trivial runs on the process runtime.
bench: $(STAMP)
	$(BIN)/python bench/dispatch_latency.py

clean:
	rm -rf $(VENV) build *.egg-info
