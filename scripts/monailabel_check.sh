#!/usr/bin/env bash
# The MONAI Label end-to-end check (a real server, the bundle as shipped, two labelling rounds as 3D Slicer drives
# them); the harness is tests/monailabel/.
# Usage: bash scripts/monailabel_check.sh [--max-epochs N] [--min-dice-first D1] [--min-dice D2]
exec bash "$(dirname "${BASH_SOURCE[0]}")/../tests/monailabel/monailabel_check.sh" "$@"
