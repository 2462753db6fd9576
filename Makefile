# `make run` serves the app, `make test` runs every test; both create/refresh .venv first.
# `make run ADDRESS=0.0.0.0` serves on every network interface (see the README's lab-server section);
# without it the app listens on 127.0.0.1 only (.streamlit/config.toml).
PYTHON ?= python3
ADDRESS ?=
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test install bench clean

$(STAMP): requirements.txt requirements-pdf.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-pdf.txt -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m streamlit run app.py $(if $(ADDRESS),--server.address $(ADDRESS))

test: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) bench/inference.py
	$(PY) bench/train_speed.py
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) bench/faults.py
	$(PY) bench/cases.py

clean:
	rm -rf $(VENV) .pytest_cache
