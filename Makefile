PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= data

.PHONY: install test data demo bench clean

# Everything a fresh machine needs: the venv with the project and its dev extras, and the data.
install: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest -q

# The whole real-time loop on embedded defaults until Ctrl-C (or DURATION=seconds).
demo: $(VENV)/.installed
	$(PY) -m monolith_ray.cli demo $(if $(DURATION),--duration $(DURATION))

# MovieLens-100K, taken from the recbole wheel on PyPI (not imported), as Parquet splits.
data: $(VENV)/.installed
	$(PY) -m monolith_ray.data.movielens fetch --dest $(DATA)

bench: $(VENV)/.installed
	$(PY) -m benchmarks.table

clean:
	rm -rf $(VENV) $(DATA) .pytest_cache
