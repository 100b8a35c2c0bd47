#!/usr/bin/env python
"""Packaging for the `edge-tpm` Azure CLI extension."""
from setuptools import setup, find_packages

VERSION = "0.3.0"

CLASSIFIERS = [
    "Development Status :: 3 - Alpha",
    "Intended Audience :: Developers",
    "Intended Audience :: System Administrators",
    "Programming Language :: Python",
    "Programming Language :: Python :: 3",
    "Programming Language :: Python :: 3 :: Only",
    "License :: OSI Approved :: MIT License",
]

# Only what azure-cli lacks: az (azure-cli >= azext.minCliCoreVersion) already ships paramiko,
# cryptography, azure-core, azure-mgmt-iothubprovisioningservices, knack and requests, and loads
# its own copies first, so declaring them would only put unused copies into the extension's
# directory. tomlkit is not part of az.
DEPENDENCIES = [
    "tomlkit~=0.12",
]

# tpm2-pytss is optional: it builds from source only where the tpm2-tss C libraries and a
# compiler are installed (libtss2-dev), which Cloud Shell, az's Docker image and stock
# machines lack. Only `ek show --local` needs it; elsewhere the EK read over SSH is checked
# structurally. `--local` without it says how to add it (azext_edgetpm/tpm/local.py).
EXTRAS = {
    "local": ["tpm2-pytss>=2.1"],
}

with open("README.md", "r", encoding="utf-8") as f:
    README = f.read()
with open("HISTORY.rst", "r", encoding="utf-8") as f:
    HISTORY = f.read()

setup(
    name="edge-tpm",
    version=VERSION,
    description="Provision Linux devices with TPM 2.0 as Azure IoT Edge devices through DPS.",
    long_description=README + "\n\n" + HISTORY,
    long_description_content_type="text/markdown",
    license="MIT",
    author="az edge-tpm maintainers",
    url="https://github.com/az-edge-tpm/az-edge-tpm",
    classifiers=CLASSIFIERS,
    packages=find_packages(include=["azext_edgetpm", "azext_edgetpm.*"], exclude=["*.tests", "*.tests.*"]),
    package_data={"azext_edgetpm": ["azext_metadata.json"]},
    install_requires=DEPENDENCIES,
    extras_require=EXTRAS,
)
