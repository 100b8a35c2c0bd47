#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (as root) and runs the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k ek_show -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVKIT_PREBUILD=1 bash scripts/bootstrap.sh
# pytest exits 5 when it ran no test: that is a failure here too.
exec .venv/bin/python -m pytest "$@"
