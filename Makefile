# Two commands matter: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test run proto bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Lint and types are part of the suite: a finding fails `make test` like a failing test.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q $(PYTEST_ARGS)

run: $(STAMP)
	./scripts/run-dev.sh

proto: $(STAMP)
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m grpc_tools.protoc -Ivss/proto --python_out=vss/proto --pyi_out=vss/proto vss/proto/vss.proto

bench: $(STAMP)
	$(PY) bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .data .pytest_cache
