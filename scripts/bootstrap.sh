#!/usr/bin/env bash
# Installs everything the development kit and the tests need on a fresh Debian 12 machine
# (root). Idempotent: a second run only checks. Creates .venv (the full toolchain, with a
# real azure-cli) and .venv-notss (azure-cli-core without tpm2-pytss, the stand-in for a
# machine where the TSS libraries cannot be installed, such as Windows or macOS).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

APT_PACKAGES=(openssh-server swtpm swtpm-tools tpm2-tools libtss2-dev libtss2-tcti-swtpm0
              pkg-config iproute2 dpkg-dev sudo gcc python3-dev openssl ca-certificates
              debootstrap tinyproxy-bin nftables
              qemu-user-static   # the arm64 device's userland runs under qemu-user (binfmt_misc)
              dnf rpm createrepo-c gnupg   # gnupg: the kit signs its RPMs (rpmsign)
              chromium)   # chromium: the HTML fleet report's screenshot test (headless)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The device userlands the tests run on take minutes to build the first time (arm64's under
# qemu-user); with DEVKIT_PREBUILD=1 (scripts/test.sh) they build in the background while pip
# works below. The tests' own builds wait for it (a lock per userland) and reuse what it built.
# Debian 11 and 13 are needed early in the suite; arm64 late, so its build yields the CPU
# (nice) to the tests it overlaps.
if [ "${DEVKIT_PREBUILD:-}" = 1 ]; then
  log="${TMPDIR:-/tmp}/edgetpm-devkit-prebuild"
  nohup python3 -m devkit userlands bullseye trixie > "$log.log" 2>&1 < /dev/null &
  nohup nice -n 19 python3 -m devkit userlands bookworm-arm64 > "$log-arm64.log" 2>&1 < /dev/null &
fi

PY=${PYTHON:-python3}
PIP_FLAGS=(-q --disable-pip-version-check)
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if [ ! -f .venv/.bootstrapped ] || [ requirements-dev.txt -nt .venv/.bootstrapped ]; then
  echo "bootstrap: pip install -r requirements-dev.txt (into .venv)"
  .venv/bin/pip install "${PIP_FLAGS[@]}" --upgrade pip wheel
  .venv/bin/pip install "${PIP_FLAGS[@]}" -r requirements-dev.txt
  .venv/bin/pip install "${PIP_FLAGS[@]}" -e . --no-deps
  touch .venv/.bootstrapped
fi
# The azure-cli release the extension declares as its minimum (azext.minCliCoreVersion): the
# other environments are built on it, so the tests run against that version.
MIN_CLI=$("$PY" -c 'import json; print(json.load(open("azext_edgetpm/azext_metadata.json"))["azext.minCliCoreVersion"])')

# .venv-notss: a clean azure-cli where tpm2-pytss cannot be built (no pkg-config data for the TSS
# libraries, as in Cloud Shell or az's Docker image); the extension's wheel goes in with the real
# `az extension add` (azext_edgetpm/tests/latest/test_install.py).
if [ ! -x .venv-notss/bin/python ]; then
  "$PY" -m venv .venv-notss
fi
if [ "$(cat .venv-notss/.bootstrapped 2>/dev/null)" != "azure-cli==$MIN_CLI" ] || [ scripts/bootstrap.sh -nt .venv-notss/.bootstrapped ]; then
  echo "bootstrap: pip install azure-cli==$MIN_CLI (into .venv-notss, no tpm2-pytss)"
  .venv-notss/bin/pip install "${PIP_FLAGS[@]}" --upgrade pip wheel
  PKG_CONFIG_LIBDIR=/nonexistent .venv-notss/bin/pip install "${PIP_FLAGS[@]}" "azure-cli==$MIN_CLI"
  if .venv-notss/bin/python -c "import tpm2_pytss" 2>/dev/null; then
    .venv-notss/bin/pip uninstall -q -y tpm2-pytss
  fi
  echo "azure-cli==$MIN_CLI" > .venv-notss/.bootstrapped
fi

# .wheelhouse: the extension's own dependencies as wheels, so that `az extension add` in the
# tests installs the wheel without reaching a package index.
if [ ! -f .wheelhouse/.bootstrapped ] || [ setup.py -nt .wheelhouse/.bootstrapped ]; then
  echo "bootstrap: pip download the extension's dependencies (into .wheelhouse)"
  rm -rf .wheelhouse
  .venv/bin/pip download "${PIP_FLAGS[@]}" --no-build-isolation -d .wheelhouse .
  touch .wheelhouse/.bootstrapped
fi

# .venv-azdev: azdev (the Azure CLI's developer tool: linter and style checks) with azure-cli-core
# of the same release and the libraries the extension imports; scripts/azdev_offline.py runs it.
AZDEV_VERSION=0.2.13
if [ ! -x .venv-azdev/bin/python ]; then
  "$PY" -m venv .venv-azdev
fi
if [ "$(cat .venv-azdev/.bootstrapped 2>/dev/null)" != "azdev==$AZDEV_VERSION azure-cli-core==$MIN_CLI" ] || [ scripts/bootstrap.sh -nt .venv-azdev/.bootstrapped ]; then
  echo "bootstrap: pip install azdev==$AZDEV_VERSION azure-cli-core==$MIN_CLI (into .venv-azdev)"
  .venv-azdev/bin/pip install "${PIP_FLAGS[@]}" --upgrade pip wheel
  .venv-azdev/bin/pip install "${PIP_FLAGS[@]}" "azdev==$AZDEV_VERSION" "azure-cli-core==$MIN_CLI" paramiko tomlkit
  echo "azdev==$AZDEV_VERSION azure-cli-core==$MIN_CLI" > .venv-azdev/.bootstrapped
fi
