PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= data

.PHONY: install test data demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest -q

data: $(VENV)/.installed
	$(PY) -m monolith_ray.data.movielens fetch --dest $(DATA)

demo: $(VENV)/.installed
	$(PY) -m monolith_ray.cli demo

bench: $(VENV)/.installed
	$(PY) -m benchmarks.table

clean:
	rm -rf $(VENV) $(DATA) .pytest_cache
