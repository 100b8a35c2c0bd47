"""Fixtures and helpers shared by the DPS tests (no tests here).

Everything runs against the real DPS emulator of the devkit (devkit.dps.Emulator): HTTPS with its
own CA (trusted through REQUESTS_CA_BUNDLE, as a user behind a private CA would), the service
API, ARM and an Entra ID-like identity endpoint. The ARM path logs in for real: `az cloud
register` with the emulator's ARM endpoint, then `az login --service-principal`.
"""
import base64
import json
import os
import subprocess
import sys

import pytest

from azext_edgetpm.tests.latest.azcli import az

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))


def rsa_ek(seed: int) -> str:
    """A structurally valid RSA-2048 EK (marshalled TPM2B_PUBLIC with the TCG EK template's
    attributes) whose modulus depends on `seed`; the base64 DPS takes."""
    import hashlib
    import struct
    modulus = b"".join(hashlib.sha256(f"{seed}-{i}".encode()).digest() for i in range(8))
    policy = bytes.fromhex("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")
    area = struct.pack(">HHI", 0x0001, 0x000B, 0x000300B2) + struct.pack(">H", len(policy)) + policy
    area += struct.pack(">HHHHHI", 0x0006, 0x0080, 0x0043, 0x0010, 2048, 0) + struct.pack(">H", 256) + modulus
    return base64.b64encode(struct.pack(">H", len(area)) + area).decode()


def require_emulator():
    try:
        import devkit.dps  # noqa: F401  pylint: disable=unused-import
    except ImportError as exc:  # pragma: no cover - the devkit ships with the repository
        pytest.skip(f"devkit DPS emulator unavailable: {exc}")


def start_emulator(directory, host_ips=(), **kwargs):
    require_emulator()
    from devkit.dps import Emulator
    return Emulator(str(directory), host_ips=list(host_ips), **kwargs).start()


class EmulatorEnv:
    """A started emulator, its devkit.json section and REQUESTS_CA_BUNDLE pointing at its CA."""

    def __init__(self, emu):
        self.emu = emu
        self.section = emu.section()
        self._saved = os.environ.get("REQUESTS_CA_BUNDLE")
        os.environ["REQUESTS_CA_BUNDLE"] = self.section["ca_bundle"]
        d = emu.directory
        self.cs_file = os.path.join(d, "owner-connection-string.txt")
        self.read_cs_file = os.path.join(d, "read-connection-string.txt")
        self.sp_secret_file = os.path.join(d, "sp-secret.txt")
        for path, text in ((self.cs_file, self.section["connection_string"]),
                           (self.read_cs_file, self.section["read_connection_string"]),
                           (self.sp_secret_file, self.section["sp"]["secret"])):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)

    @property
    def login(self):
        """--login @file: the connection string never on a command line."""
        return ["--login", "@" + self.cs_file]

    @property
    def arm(self):
        return ["--dps-name", self.section["dps_name"], "-g", self.section["resource_group"]]

    def secrets(self):
        """Every secret the emulator holds that must never be printed or logged."""
        out = [self.section["sp"]["secret"]]
        for p in self.emu.policies.values():
            out += [p.primary_key_b64, p.secondary_key_b64]
        return out

    def count(self, prefix):
        return sum(v for k, v in self.emu.counters().items() if k.startswith(prefix))

    def close(self):
        self.emu.stop()
        if self._saved is None:
            os.environ.pop("REQUESTS_CA_BUNDLE", None)
        else:
            os.environ["REQUESTS_CA_BUNDLE"] = self._saved


def ok(*args, **kwargs):
    r = az(*args, **kwargs)
    assert r.rc == 0, f"az {' '.join(args)} failed: {r.message} | {r.recommendation} | {r.stderr[-2000:]}"
    return r


class ArmLogin:
    """`az cloud register` + `az login --service-principal` against the emulator, undone afterwards."""

    def __init__(self, env: EmulatorEnv):
        s = env.section
        self.cloud = s["cloud_name"]
        # (--cloud-config: ARM's endpoint and the cloud's IoT Hub and DPS domains, as for a sovereign cloud)
        ok("cloud", "register", "-n", self.cloud, "--cloud-config", json.dumps(s["cloud_config"]))
        # MSAL would otherwise ask login.microsoftonline.com whether the custom authority is known.
        ok("config", "set", "core.instance_discovery=false")
        ok("cloud", "set", "-n", self.cloud)
        # The secret as @file, as a user should pass it (and as the demo does): never on a command
        # line, and a secret that starts with `-` is not read as an option.
        ok("login", "--service-principal", "-u", s["sp"]["app_id"], "-p", "@" + env.sp_secret_file,
           "--tenant", s["tenant"])

    def close(self):
        # (`az logout` and `az account clear` fail here: MSAL asks the emulator for the
        # "organizations" authority, which it does not serve. Switching back to AzureCloud leaves
        # no account active; the session's config directory is thrown away anyway.)
        az("cloud", "set", "-n", "AzureCloud")
        az("cloud", "unregister", "-n", self.cloud)
        az("config", "unset", "core.instance_discovery")


def az_subprocess(*args, timeout=120):
    """The real `az` in a new process (so --debug logging is configured for this run alone)."""
    return subprocess.run([sys.executable, "-m", "azure.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ), cwd=REPO, check=False)


@pytest.fixture(scope="module")
def dps(tmp_path_factory):
    # (as root, the service API also on <address>:443, where a child process resolves the DPS's DNS name)
    env = EmulatorEnv(start_emulator(tmp_path_factory.mktemp("dps"), hub_address="auto" if os.geteuid() == 0 else None))
    try:
        yield env
    finally:
        env.close()


@pytest.fixture(scope="module")
def arm_login(dps):
    login = ArmLogin(dps)
    try:
        yield login
    finally:
        login.close()
