#!/usr/bin/env bash
# The one prepared GPU check (trainer/device_check.py has the details):
#   scripts/device_check.sh --fetch     on a CPU machine with package access: the pinned wheel set -> .whl/device
#   scripts/device_check.sh --dry-run   the plan and the wheel set's size (no GPU, no network)
#   scripts/device_check.sh             on the GPU machine, .whl/device carried: install, check, device_report.json
#   scripts/device_check.sh --device cpu   the same checks at tiny sizes on CPU (a smoke run of the code)
# On the lent machine: run(command="scripts/device_check.sh", carry=[".whl/device"]); the report lands in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false RAY_USAGE_STATS_ENABLED=0 WANDB_MODE=disabled
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}"
exec "$PY" -m trainer.device_check "$@"
