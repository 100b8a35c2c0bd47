#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (as root) and runs the main job on the development kit:
# simulated TPM devices provisioned end to end with az edge-tpm, then everything torn down.
# Extra arguments go to `python -m devkit demo`, e.g. `bash scripts/demo.sh --devices 3`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m devkit demo "$@"
