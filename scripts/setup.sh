#!/bin/bash
# Set up a development environment in .venv with the extras a target needs:
#   scripts/setup.sh            the format and the client only (pip install paramdelta)
#   scripts/setup.sh registry   + the server (registry, scale, torch, transformers: any extras, comma-separated)
#   scripts/setup.sh test       + test tools, the scale-out backends' drivers, the bench extras used by tests
#   scripts/setup.sh bench      + the benchmarks' extras and the scale-out drivers
# Where the extras need torch (test and bench compare against it), the CPU build of torch
# goes in first: an unpinned torch would resolve to a multi-GB CUDA build.
# Idempotent: skips pip when pyproject.toml has not changed since the last run.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${1:-}
PY=${PYTHON:-python3}
case "$EXTRAS" in
    "") spec="." ;;
    test) spec=".[test,scale,bench]" ;;
    bench) spec=".[bench,scale]" ;;
    *[!a-z,]*) echo "setup.sh: extras are names from pyproject.toml, comma-separated (got '$EXTRAS')" >&2; exit 2 ;;
    *) spec=".[$EXTRAS]" ;;
esac
case "$EXTRAS" in  # the extras that pull torch in: test, bench, torch, transformers
    test | bench | *torch* | *transformers*) needs_torch=1 ;;
    *) needs_torch=0 ;;
esac
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=".venv/.paramdelta-setup-${EXTRAS:-runtime}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    if [ "$needs_torch" = 1 ]; then
        # Only torch from the CPU index (PARAMDELTA_TORCH_INDEX for a mirror); its dependencies come
        # with the extras below, from the usual index. A torch already there is kept.
        .venv/bin/python -m pip install -q --no-deps "torch==2.13.0" \
            --index-url "${PARAMDELTA_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
    fi
    .venv/bin/python -m pip install -q -e "$spec"
    touch "$stamp"
fi
