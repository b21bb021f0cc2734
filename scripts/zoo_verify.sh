#!/usr/bin/env bash
# The Model Zoo's own bundle check (model-zoo ci/verify_bundle.py, modes min and full) on a copy of this bundle, as
# the Zoo's CI runs it (ci/run_premerge_cpu.sh: min; ci/run_premerge_gpu.sh: full with PYTHONPATH at the Zoo root),
# offline. Nothing in the checkout is touched: the Zoo's ci/ (and each supported app's properties folder) and the
# bundle (the files a Zoo submission has) go to a temporary Zoo root, removed at the end unless --keep.
#
#     bash scripts/zoo_verify.sh [ZOO_GIT_OR_CHECKOUT] [--model PATH] [--keep]
#
# ZOO: a model-zoo checkout or bare git directory; default $PLGDF_MODEL_ZOO, else the mirror beside the repo
# (../.mirror/Project-MONAI+model-zoo/repo, like ../shared). --model: the models/model.pt to check; default the
# untrained network_def of configs/inference.json (seed 0) saved as a plain state_dict: the bundle ships no weights.
# The metadata schema is the local copy in ../shared/monai (PLGDF_SHARED_DATA/../monai), put where the Zoo's
# prepare_schema.py puts the downloaded one (nothing is downloaded).
# models/model_info.json is the Zoo's own (its released versions), or {} when the Zoo has none.
# Python: the python on PATH (activate .venv first). Exit status: 0 both modes passed; 1 a mode failed; 2 not found.
set -euo pipefail

NAME=plgdf_segmentation
COPY_ITEMS=(configs bundle scripts docs LICENSE README.md CHANGELOG.md setup.cfg)  # as tests/monailabel
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

zoo="" model="" keep=0
while (($#)); do
    case $1 in
        --model) model=${2:?--model needs a path}; shift 2 ;;
        --model=*) model=${1#--model=}; shift ;;
        --keep) keep=1; shift ;;
        -h | --help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "unknown option: $1 (usage: bash scripts/zoo_verify.sh [ZOO] [--model PATH] [--keep])" >&2; exit 2 ;;
        *) zoo=$1; shift ;;
    esac
done
zoo=${zoo:-${PLGDF_MODEL_ZOO:-$REPO/../.mirror/Project-MONAI+model-zoo/repo}}
if [[ -d "$zoo" ]]; then zoo=$(cd "$zoo" && pwd); fi
schema_dir="$(dirname "${PLGDF_SHARED_DATA:-$REPO/../shared/data}")/monai"

# the Zoo: a checkout (files) or a git directory (read with git archive); the copies below are read from it
if [[ -f "$zoo/ci/verify_bundle.py" ]]; then
    zoo_kind=checkout
    zoo_has() { [[ -e "$zoo/$1" ]]; }
    zoo_export() { (cd "$zoo" && tar -cf - "$@") | tar -xf - -C "$tmp"; }
elif git --git-dir="$zoo" cat-file -e HEAD:ci/verify_bundle.py 2>/dev/null; then
    zoo_kind="git $(git --git-dir="$zoo" rev-parse --short HEAD)"
    zoo_has() { git --git-dir="$zoo" cat-file -e "HEAD:$1" 2>/dev/null; }
    zoo_export() { git --git-dir="$zoo" archive HEAD "$@" | tar -xf - -C "$tmp"; }
else
    echo "Model Zoo not found at '$zoo' (give a model-zoo checkout or git directory, or set PLGDF_MODEL_ZOO)" >&2
    exit 2
fi
schema_name=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['schema'].rsplit('/', 1)[-1])" \
    "$REPO/configs/metadata.json")
if [[ ! -f "$schema_dir/$schema_name" ]]; then
    echo "metadata schema not found at $schema_dir/$schema_name (it is not downloaded)" >&2
    exit 2
fi
if [[ -n "$model" && ! -f "$model" ]]; then
    echo "--model: no such file: $model" >&2
    exit 2
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/plgdf_zoo_verify.XXXXXX")
if ((keep)); then echo "temporary Zoo root kept: $tmp"; else trap 'rm -rf "$tmp"' EXIT; fi
bundle_dir="$tmp/models/$NAME"

# the Zoo's ci/, its released versions and the properties folder of each app in supported_apps
apps=$(python -c "import json, sys; print(' '.join(json.load(open(sys.argv[1])).get('supported_apps', {})))" \
    "$REPO/configs/metadata.json")
zoo_export ci
mkdir -p "$tmp/models"
if zoo_has models/model_info.json; then
    zoo_export models/model_info.json
else
    echo "{}" >"$tmp/models/model_info.json"
fi
stand_in=()
for app in $apps; do
    if zoo_has "$app"; then
        zoo_export "$app"
    else
        # the Zoo's CI would skip this app's property check silently; check MONAI's own properties instead
        echo "note: the Zoo has no $app/bundle_properties.py; its property check uses MONAI's Meta+InferProperties"
        stand_in+=("$app")
        mkdir -p "$tmp/$app"
        cat >"$tmp/$app/bundle_properties.py" <<EOF
"""Stand-in for the Zoo's $app properties: MONAI's own (written by scripts/zoo_verify.sh)."""
from monai.bundle.properties import InferProperties, MetaProperties  # noqa: F401
EOF
    fi
done

# the bundle as a Zoo submission has it, the schema where prepare_schema.py puts it, and a models/model.pt
mkdir -p "$bundle_dir/models" "$bundle_dir/eval"
items=()
for item in "${COPY_ITEMS[@]}"; do if [[ -e "$REPO/$item" ]]; then items+=("$item"); fi; done
tar -C "$REPO" --exclude=__pycache__ --exclude='*.pyc' -cf - "${items[@]}" | tar -xf - -C "$bundle_dir"
cp "$schema_dir/$schema_name" "$bundle_dir/eval/schema.json"
export PYTHONDONTWRITEBYTECODE=1
if [[ -n "$model" ]]; then
    cp "$model" "$bundle_dir/models/model.pt"
    weights="models/model.pt: $model"
else
    (cd "$bundle_dir" && PYTHONPATH="$bundle_dir" python -c "
import torch
from monai.bundle import ConfigParser

torch.manual_seed(0)
parser = ConfigParser()
parser.read_config('configs/inference.json')
parser.read_meta('configs/metadata.json')
torch.save(parser.get_parsed_content('network_def').state_dict(), 'models/model.pt')
")
    weights="models/model.pt: UNTRAINED network_def of configs/inference.json (seed 0); the bundle ships no weights"
fi
echo "Zoo: $zoo ($zoo_kind); $weights"

# the Zoo's calls, from the Zoo root: min as run_premerge_cpu.sh (no PYTHONPATH), full as run_premerge_gpu.sh
declare -A marks=(
    [directory]="directory is verified correctly."
    [version/changelog]="version and changelog are verified correctly."
    ["metadata format"]="metadata format is verified correctly."
    [properties]="successfully checked properties."
    ["data shape"]="data shape is verified correctly."
    [TorchScript]="export weights into TorchScript module successfully."
)
order=(directory version/changelog "metadata format" properties "data shape" TorchScript)
summary=() failed=0
for mode in min full; do
    log="$tmp/verify_$mode.log"
    if [[ $mode == min ]]; then env_args=(-u PYTHONPATH); else env_args=(PYTHONPATH="$tmp"); fi
    echo "=== python ci/verify_bundle.py -b $NAME -p models -m $mode"
    if (cd "$tmp" && env "${env_args[@]}" ALLOW_MONAI_RC=true \
        python "$tmp/ci/verify_bundle.py" -b "$NAME" -p models -m "$mode" 2>&1 | tee "$log"); then
        status=PASS
    else
        status=FAIL failed=1
    fi
    checks=()
    for check in "${order[@]}"; do
        if ! grep -qF "${marks[$check]}" "$log"; then continue; fi
        if [[ $check == properties && ${#stand_in[@]} -gt 0 ]]; then
            check="properties (MONAI stand-in for ${stand_in[*]})"
        fi
        checks+=("$check")
    done
    summary+=("zoo verify_bundle $mode: $status ($(IFS=,; echo "${checks[*]}" | sed 's/,/, /g'))")
done
printf '%s\n' "$weights" "${summary[@]}"
exit "$failed"
