# Two commands on a fresh machine: `make run` (main job) and `make test` (test suite).
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: run test install lint

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m stldec.cli quickstart --output_dir outputs/quickstart

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .
