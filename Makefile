# The README's two commands are `make demo` and `make test`; both do all the set-up themselves.
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/.tools/bin:$(CURDIR)/$(BIN):$(PATH)
PYTEST_ARGS ?=

.PHONY: setup demo test pytest lint typecheck bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(BIN)/llmfleet demo $(DEMO_ARGS)

# Tests first (so a set-up machine reaches the first test quickly), then lint and type checks.
test: setup
	$(BIN)/pytest $(PYTEST_ARGS)
	$(BIN)/ruff check llmfleet tests bench
	$(BIN)/mypy llmfleet

pytest: setup
	$(BIN)/pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check llmfleet tests bench

typecheck: setup
	$(BIN)/mypy llmfleet

clean:
	rm -rf $(VENV) .tools .cache llmfleet/v1
