#!/usr/bin/env bash
# End-to-end check of the bundle as shipped in MONAI Label 0.8.5 (monaibundle app): a real server on 127.0.0.1 with
# demo studies, driven the way 3D Slicer drives it (next sample, auto segmentation, submit label, asynchronous
# training polled to the end) for two labelling rounds (tests/monailabel/monailabel_check.py does the checks).
#
# Usage: bash tests/monailabel/monailabel_check.sh [--max-epochs N] [--min-dice-first D1] [--min-dice D2]
# Environment:
#   PLGDF_MONAILABEL_VENV  the separate environment (default: <repo>/.venv-monailabel; created when missing)
#   PLGDF_MONAILABEL_WORK  working folder for the app, studies and bundle copy (default: a new temporary folder)
#   PLGDF_MONAILABEL_KEEP  1 keeps the working folder afterwards (default: removed on success)
#
# The environment is separate from the bundle's own: monailabel 0.8.5 forces numpy<2, needs pydicom<3,
# dicomweb-client 0.59.1 and pynetdicom<3 to start, and imports torchvision, which loads with the CUDA build
# of torch 2.14.1 (not with torch+cpu). First run: about 8 minutes of installs; later runs reuse it.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${PLGDF_MONAILABEL_VENV:-$REPO/.venv-monailabel}"
PY_VERSION_OK='import sys; sys.exit(0 if sys.version_info[:2] >= (3, 10) else 1)'
START=$(date +%s)

log() { echo "[monailabel_check $(($(date +%s) - START))s] $*"; }

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import monailabel, sys; \
sys.exit(0 if monailabel.__version__.startswith('0.8.5') else 1)" 2>/dev/null; then
  log "creating $VENV (monailabel 0.8.5, torch 2.14.1, torchvision 0.29.1, numpy<2)"
  python3 -c "$PY_VERSION_OK"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "torch==2.14.1" "torchvision==0.29.1"
  "$VENV/bin/pip" install -q "monailabel==0.8.5" "monai==1.6.1" "pydicom<3" "dicomweb-client==0.59.1" \
    "pynetdicom<3" "numpy<2" "torch==2.14.1" "torchvision==0.29.1"
fi
log "installing the bundle and its requirements into $VENV"
"$VENV/bin/pip" install -q "$REPO" "numpy<2" "torch==2.14.1" "torchvision==0.29.1" "pydicom<3" \
  "dicomweb-client==0.59.1" "pynetdicom<3"

WORK="${PLGDF_MONAILABEL_WORK:-$(mktemp -d -t plgdf-monailabel-XXXXXX)}"
mkdir -p "$WORK"
log "working folder $WORK"

set +e
PATH="$VENV/bin:$PATH" VIRTUAL_ENV="$VENV" OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" \
  PYTHONPATH="$REPO" "$VENV/bin/python" "$REPO/tests/monailabel/monailabel_check.py" --repo "$REPO" --work "$WORK" "$@"
rc=$?
set -e
if [ "$rc" -eq 0 ] && [ "${PLGDF_MONAILABEL_KEEP:-0}" != "1" ] && [ -z "${PLGDF_MONAILABEL_WORK:-}" ]; then
  rm -rf "$WORK"
fi
log "finished with status $rc in $(($(date +%s) - START)) s"
exit "$rc"
