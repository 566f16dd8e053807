# Developer commands. `make check` is what CI runs (.ci/run), after installing the test extra.
.PHONY: check lint format typecheck test-fast test

check: lint typecheck test

lint:  ## ruff lint + formatting check (versions pinned in the test extra)
	ruff check .
	ruff format --check .

format:  ## rewrite the tree in the house format, then apply ruff's safe fixes
	ruff format .
	ruff check --fix .

typecheck:  ## mypy over the package (settings in pyproject.toml)
	mypy

test-fast:  ## the unit tier: everything but the end-to-end runs through Ray (pytest -m "not slow")
	python -m pytest -q -m "not slow and not gpu"

test:  ## the whole suite, as CI runs it
	python -m pytest -q
