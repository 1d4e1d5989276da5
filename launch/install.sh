#!/usr/bin/env bash
# Builds this checkout's environment for one platform and checks that JAX sees its devices.
#
#   launch/install.sh cpu|cuda12|tpu [VENV]        (VENV defaults to .venv)
#
# The package and the platform's jax build come from the repository's own pyproject.toml
# (`pip install -e .[train,convert,PLATFORM]`, tested ranges). jax needs Python >= 3.11;
# uv (from PyPI) creates the environment with Python $PYTHON_VERSION (default 3.12), using
# the system's interpreter when it is that version and downloading a managed one otherwise
# (TPU VM images ship Python 3.10). The last step, launch/check_platform.py, exits
# non-zero with one line when the devices are not the platform's (a GPU host whose driver
# is missing, a TPU VM whose libtpu does not load).
# Set DRY_RUN=1 to print the commands instead of running them.
set -euo pipefail

usage="usage: launch/install.sh cpu|cuda12|tpu [VENV]"
PLATFORM="${1:?$usage}"
VENV="${2:-.venv}"
PYTHON_VERSION="${PYTHON_VERSION:-3.12}"
case "$PLATFORM" in
  cpu|cuda12|tpu) ;;
  *) echo "error: unknown platform '$PLATFORM'; $usage" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."

run() {
  if [[ -n "${DRY_RUN:-}" ]]; then
    printf '%q ' "$@"; printf '\n'
  else
    "$@"
  fi
}

UV="$(command -v uv || true)"
if [[ -z "$UV" ]]; then
  run python3 -m pip install --user --quiet 'uv>=0.5,<1'
  UV="$(python3 -c 'import site; print(site.USER_BASE)')/bin/uv"
fi
run "$UV" venv --allow-existing --python "$PYTHON_VERSION" "$VENV"
run "$UV" pip install --python "$VENV/bin/python" -e ".[train,convert,$PLATFORM]"
run "$VENV/bin/python" launch/check_platform.py "$PLATFORM"
