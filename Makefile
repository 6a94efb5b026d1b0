# Two commands for a fresh Debian/Ubuntu machine with Python 3: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench bench-relay-receive soak fuzz clean

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
	$(BIN)/ruff check relaybal tests bench twisted examples

typecheck: $(STAMP)
	$(BIN)/mypy --strict relaybal

unit: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

bench-relay-receive: $(STAMP)
	$(BIN)/python bench/relay_receive.py

# The reliability suites' long versions (docs/reliability.rst): RELAYBAL_SOAK_SECONDS of load per
# suite (default 120), RELAYBAL_SOAK_KILLS kill -9s at least (default 12); figures to build/.
soak: $(STAMP)
	@mkdir -p build
	RELAYBAL_SOAK=1 RELAYBAL_FIGURES=$(CURDIR)/build/soak-figures.jsonl $(BIN)/pytest -q -s -p no:cacheprovider \
		tests/test_reliability_crash.py tests/test_reliability_gateways.py tests/test_reliability_disk.py \
		tests/test_reliability_hostile.py tests/test_reliability_abuse.py tests/test_reliability_fuzz.py

# Every fuzz target for FUZZ_SECONDS (default 60) with hypothesis, then with atheris if it
# installs (FUZZ_TARGETS to choose some); crashes go to build/fuzz/crashes/.
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	-@$(BIN)/python -m pip install -q atheris 2>/dev/null || echo "atheris does not install here: hypothesis only"
	@mkdir -p build
	FUZZ_SECONDS=$(FUZZ_SECONDS) RELAYBAL_FIGURES=$(CURDIR)/build/fuzz-figures.jsonl $(BIN)/python tests/fuzz/run.py

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
