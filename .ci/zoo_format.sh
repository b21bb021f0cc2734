#!/usr/bin/env bash
# The Model Zoo's code-format checks, as its CI runs them (model-zoo runtests.sh --codeformat, .pre-commit-config.yaml),
# with its settings in setup.cfg / pyproject.toml (isort first-party: bundle; black --skip-magic-trailing-comma; flake8
# with bugbear, comprehensions, executable and pep8-naming). Needs the lint extra: pip install -e ".[lint]".
# docs/results/ holds generated benchmark data (not bundle configs) and is left out of the JSON formatting check.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m isort --check .
python -m black --skip-magic-trailing-comma --check .
python -m flake8 . --count --statistics
git ls-files '*.json' | grep -v '^docs/results/' | xargs pretty-format-json --no-sort-keys --indent=4
git ls-files | grep -vE '\.(pt|ts|png|jpg|gz|h5)$' | xargs end-of-file-fixer
git ls-files '*.py' | xargs check-docstring-first
echo "Model Zoo format checks: passed"
