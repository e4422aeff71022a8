#!/bin/bash
# Set up a development environment in .venv: the CPU build of torch first (an unpinned
# torch resolves to a multi-GB CUDA build), then paramdelta with the extras asked for.
#   scripts/setup.sh            runtime only
#   scripts/setup.sh test       + test tools, scale-out backends, bench extras used by tests
# Idempotent: skips pip when pyproject.toml has not changed since the last run.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${1:-}
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=".venv/.paramdelta-setup-${EXTRAS:-runtime}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q "torch==2.13.0"
    spec="."
    case "$EXTRAS" in
        test) spec=".[test,scale,bench]" ;;
        bench) spec=".[bench,scale]" ;;
    esac
    .venv/bin/python -m pip install -q -e "$spec"
    touch "$stamp"
fi
