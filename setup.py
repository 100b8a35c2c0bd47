#!/usr/bin/env python
"""Packaging for the `edge-tpm` Azure CLI extension."""
from setuptools import setup, find_packages

VERSION = "0.1.0"

CLASSIFIERS = [
    "Development Status :: 3 - Alpha",
    "Intended Audience :: Developers",
    "Intended Audience :: System Administrators",
    "Programming Language :: Python",
    "Programming Language :: Python :: 3",
    "Programming Language :: Python :: 3 :: Only",
    "License :: OSI Approved :: MIT License",
]

# azure-cli-core and knack come with az itself and are not repeated here.
# tpm2-pytss needs the tpm2-tss C libraries, which only Linux distributions ship:
# on Windows and macOS the extension installs without it and its SSH paths still run
# (see azext_edgetpm/tpm/ek.py for what changes there).
DEPENDENCIES = [
    "paramiko>=3.4",
    "tomlkit>=0.12",
    "tpm2-pytss>=2.1; sys_platform == 'linux'",
]

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
)
