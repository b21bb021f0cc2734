#!/usr/bin/env bash
# The Model Zoo's pytype check (model-zoo runtests.sh --pytype, its [tool.pytype] settings: keep going, the
# attribute/container/parameter/variable type checks, pyi-error and import-error disabled, precise returns,
# protocols), over every Python folder of the bundle; .ci/run runs it last. A cold run costs about 11.5 CPU-minutes
# (bundle/ alone 5.2; measured 2026-12-01 on the 2-core development CPU), more than all the other format checks
# together. pytype is not a declared dependency (2024.10.11 has wheels for Python 3.10-3.12, none for 3.13):
#   python -m venv /tmp/pytype-venv && /tmp/pytype-venv/bin/pip install pytype==2024.10.11
#   PYTYPE=/tmp/pytype-venv/bin/pytype bash .ci/zoo_pytype.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTYPE="${PYTYPE:-pytype}"
if ! command -v "$PYTYPE" >/dev/null; then
  echo "pytype not found ($PYTYPE): install it (see the header of .ci/zoo_pytype.sh) or set PYTYPE" >&2
  exit 2
fi
PY_VERSION="$(python3 -c 'import sys; print(f"{sys.version_info.major}.{sys.version_info.minor}")')"
"$PYTYPE" --keep-going --jobs "${PYTYPE_JOBS:-2}" --python-version "$PY_VERSION" --output .pytype --pythonpath . \
  --disable pyi-error,import-error --precise-return --protocols bundle scripts benchmarks tests
echo "Model Zoo pytype check: passed"
