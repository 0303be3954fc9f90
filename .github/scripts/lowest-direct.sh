#!/usr/bin/env bash
# The toolkit at the lowest versions its ranges allow: installs packages/branchflow with its
# extras by `uv pip install --resolution lowest-direct` into a new virtualenv (VENV, default
# .venv-lowest) and runs there the toolkit's tests that need neither the example nor the full
# mlflow server. Run from anywhere; the toolkit CI job and tests/test_packaging.py run it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv=${VENV:-$root/.venv-lowest}
uv=${UV:-uv}
$uv venv -q --python "${PYTHON:-python3}" "$venv"
# The tools the tests run with are floored too: unpinned, lowest-direct would pick pytest 2.
$uv pip install -q --python "$venv/bin/python" --resolution lowest-direct \
  "$root/packages/branchflow[report,azure]" \
  "pytest>=8" "pytest-timeout>=2.3" "pytest-xdist>=3.6" "cmarkgfm>=2024.1"
$uv pip freeze --python "$venv/bin/python" | grep -iE '^(alembic|click|dvc|jinja2|mlflow-skinny|numpy|pandas|pyyaml|sqlalchemy|tomlkit|vl-convert-python|azure-ai-ml|azure-identity)=='
cd "$root"
# `dvc` and `branchflow` run as commands: the lowest environment's come first on PATH.
PATH="$venv/bin:$PATH" PYTHONPATH="$root" "$venv/bin/python" -m pytest -p no:cacheprovider -q \
  packages/branchflow/tests/unit tests/test_context.py tests/test_gate.py \
  tests/test_exit_codes.py tests/test_base_metrics.py tests/test_base_from_mlflow.py \
  tests/test_dvc_failure.py "$@"
