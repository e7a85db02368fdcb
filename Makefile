.PHONY: test lint format

test:
	python -m pytest

lint:
	ruff check .
	ruff format --check .
	mypy src

format:
	ruff check --fix .
	ruff format .
