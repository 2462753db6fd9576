# `make run` serves the app, `make test` runs every test; both create/refresh .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test install bench clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m streamlit run app.py

test: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) bench/inference.py
	$(PY) bench/train_speed.py
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) bench/faults.py

clean:
	rm -rf $(VENV) .pytest_cache
