# The two commands of the README. Both set up everything they need first.
.PHONY: demo test test-fast bench schema vectors

demo:            ## set up, then run the whole story on the embedded default
	scripts/setup.sh bench
	.venv/bin/python scripts/demo.py

test:            ## set up (Python env + Debian packages for PostgreSQL, Ceph S3, Chromium), then run every test
	scripts/setup.sh test
	scripts/install-system-deps.sh
	.venv/bin/python -m pytest -q -rs

test-fast:       ## the tests that need no backing services
	scripts/setup.sh test
	.venv/bin/python -m pytest -q -m "not services and not slow"

bench:           ## measure, and write BENCHMARKS.md
	scripts/setup.sh bench
	.venv/bin/python bench/run.py
	.venv/bin/python bench/startup.py

schema:          ## regenerate spec/manifest.schema.json from the pydantic models
	.venv/bin/python -m deltaformat.schema

vectors:         ## regenerate spec/vectors/
	.venv/bin/python spec/vectors/make_vectors.py
