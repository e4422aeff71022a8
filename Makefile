# The two commands of the README. Both set up everything they need first.
.PHONY: demo test test-fast lint bench schema vectors

demo:            ## set up, then run the whole story on the embedded default
	scripts/setup.sh bench
	.venv/bin/python -m scripts.demo

test:            ## set up (Python env + Debian packages for PostgreSQL, Ceph S3, Chromium), lint, then run every test
	scripts/setup.sh test
	scripts/install-system-deps.sh
	.venv/bin/ruff check .
	.venv/bin/mypy
	.venv/bin/python -m pytest -q -rs

lint:            ## ruff on the tree, then mypy --strict on deltaformat (both configured in pyproject.toml)
	scripts/setup.sh test
	.venv/bin/ruff check .
	.venv/bin/mypy

test-fast:       ## the tests that need no backing services
	scripts/setup.sh test
	.venv/bin/python -m pytest -q -m "not services and not slow"

bench:           ## measure, and write BENCHMARKS.md
	scripts/setup.sh bench
	.venv/bin/python -m bench.run
	.venv/bin/python -m bench.arith_bench
	.venv/bin/python -m bench.startup

schema:          ## regenerate spec/manifest.schema.json from the pydantic models
	.venv/bin/python -m deltaformat.schema

vectors:         ## regenerate spec/vectors/
	.venv/bin/python spec/vectors/make_vectors.py
