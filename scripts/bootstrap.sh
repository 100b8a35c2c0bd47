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
              debootstrap tinyproxy-bin nftables)
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
if [ ! -x .venv-notss/bin/python ]; then
  "$PY" -m venv .venv-notss
fi
if [ ! -f .venv-notss/.bootstrapped ] || [ scripts/bootstrap.sh -nt .venv-notss/.bootstrapped ]; then
  echo "bootstrap: pip install azure-cli-core msrest azure-common paramiko tomlkit (into .venv-notss, no tpm2-pytss)"
  .venv-notss/bin/pip install "${PIP_FLAGS[@]}" --upgrade pip wheel
  .venv-notss/bin/pip install "${PIP_FLAGS[@]}" "azure-cli-core==2.91.0" msrest azure-common paramiko tomlkit
  touch .venv-notss/.bootstrapped
fi
