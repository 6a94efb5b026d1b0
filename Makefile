# Two commands for a fresh Debian/Ubuntu machine with Python 3: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench bench-relay-receive clean

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) || { echo "could not create $(VENV): install the venv module (apt-get install python3-venv)" >&2; exit 1; }
	$(BIN)/python -m pip install -q --upgrade pip

EXAMPLE_PLUGIN := examples/relaybal-policy-example

# Editable in "compat" mode: a plain path entry, so twistd finds twisted/plugins/relaybal_plugin.py.
# The example policy plugin is installed too (it ships relaybal/plugins/relaybal_policy_example.py):
# the tests prove relaybal finds and applies a separately installed plugin by name.
$(STAMP): $(BIN)/python setup.cfg pyproject.toml $(EXAMPLE_PLUGIN)/setup.cfg $(EXAMPLE_PLUGIN)/pyproject.toml
	$(BIN)/python -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	$(BIN)/python -m pip install -q -e $(EXAMPLE_PLUGIN) --config-settings editable_mode=compat
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/relaybal demo

lint: $(STAMP)
	$(BIN)/ruff check relaybal tests bench twisted

typecheck: $(STAMP)
	$(BIN)/mypy --strict relaybal

unit: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

bench-relay-receive: $(STAMP)
	$(BIN)/python bench/relay_receive.py

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
