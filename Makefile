# One-command entry points. Each creates .venv and installs the locked versions on first use
# (seconds with uv), and is a no-op install afterwards.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export MLOPS_HOME   ?= $(CURDIR)/.mlops_home
export DAGSTER_HOME ?= $(MLOPS_HOME)/dagster

.PHONY: install demo test ui mlflow-ui validate bench lock clean

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv
	$(BIN)/uv pip install --python $(BIN)/python -q --compile-bytecode -r requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)  ## land two weeks of 2013 flights, ingest, train, gate, score; print the champion
	$(BIN)/mlops demo --spec flight_delays --start 2013-01-01 --days 14

test: $(STAMP)  ## the whole suite (real Dagster, MLflow, Feast on temporary homes)
	$(BIN)/pytest -q

ui: $(STAMP)  ## Dagster UI on http://127.0.0.1:3000 for the embedded home
	$(BIN)/mlops home
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

mlflow-ui: $(STAMP)  ## MLflow UI on http://127.0.0.1:5000 for the embedded home
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(MLOPS_HOME)/mlflow/mlflow.db --host 127.0.0.1 --port 5000

validate: $(STAMP)
	$(BIN)/dagster definitions validate -m mlops_assets.definitions

bench: $(STAMP)
	$(BIN)/python bench/load_time.py

lock:  ## re-resolve requirements.lock after editing pyproject.toml
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(MLOPS_HOME)
