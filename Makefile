# Two commands on a fresh machine: `make run` (dashboard on the demo data) and `make test` (the whole suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STORE  ?= data/demo.duckdb
PORT   ?= 8501

.PHONY: run test demo bench screenshots clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: requirements.txt | $(BIN)/activate
	$(BIN)/pip install -r requirements.txt
	touch $@

$(VENV)/.test-installed: requirements-test.txt $(VENV)/.installed
	$(BIN)/pip install -r requirements-test.txt
	bash scripts/install-browser.sh
	PYTHON=$(PYTHON) bash scripts/install-img2dataset.sh
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python -m audit demo --if-missing --store $(STORE)

run: demo
	AUDIT_STORE=$(STORE) $(BIN)/streamlit run app.py --server.port $(PORT)

# the suite on every core but the Ray tests (pytest-xdist), then the Ray tests alone (pytest.ini, marker `ray`)
test: $(VENV)/.test-installed
	$(BIN)/python -m pytest -n auto -m "not ray"
	$(BIN)/python -m pytest -m ray

bench: $(VENV)/.installed
	$(BIN)/python bench/bench_foundation.py

screenshots: $(VENV)/.test-installed demo
	AUDIT_STORE=$(STORE) $(BIN)/python scripts/screenshots.py bench/out/screens

clean:
	rm -rf $(VENV) .venv-img2dataset data/demo.duckdb data/demo.duckdb.wal data/demo.vectors data/demo_inputs
