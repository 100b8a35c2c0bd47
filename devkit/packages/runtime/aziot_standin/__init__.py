"""Stand-in for the Azure IoT Edge runtime (aziot-edge + aziot-identity-service).

Installed by the devkit's stand-in packages into /usr/lib/aziot-standin/ on a simulated
device and run through /usr/lib/aziot-standin/run.py; see devkit/packages/README.md.
Standard library only, except the TPM child (tpmchild.py) which uses tpm2-pytss and the
devkit's TPM registration client.
"""
